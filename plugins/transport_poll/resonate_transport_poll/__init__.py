"""The poll transport for resonate-server."""

__version__ = "0.1.0"
