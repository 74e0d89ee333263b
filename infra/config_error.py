"""The one error type for bad CDK context, shared by the configuration modules."""

from __future__ import annotations


class ConfigError(ValueError):
    """A context value is missing or invalid; the message names the key and the fix."""
