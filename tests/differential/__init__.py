"""Randomized differential test: the real server against an in-memory reference model."""
