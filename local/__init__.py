"""Local mode: the whole pipeline on one machine, no AWS account."""
