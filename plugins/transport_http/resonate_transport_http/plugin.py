"""Hook implementations of the http transport (being written)."""
