"""Hook implementations of the poll transport (being written)."""
