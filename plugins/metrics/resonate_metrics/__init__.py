"""Prometheus metrics for resonate-server."""

__version__ = "0.1.0"
