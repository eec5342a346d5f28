"""Hook implementations of the metrics plugin (being written)."""
