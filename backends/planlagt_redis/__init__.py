"""planlagt redis backend (being written)."""
