"""Operator tools for a deployed (or local) speech-to-image pipeline."""
