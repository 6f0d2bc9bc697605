"""planlagt memory backend (being written)."""
