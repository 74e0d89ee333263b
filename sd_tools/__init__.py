"""Tools around the Stable Diffusion endpoint: a tiny offline model, packaging and an in-process toolkit harness."""
