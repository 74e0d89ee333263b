"""Lambda function: a finished transcript becomes a Stable Diffusion image."""
