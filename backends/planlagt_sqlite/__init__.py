"""planlagt sqlite backend (being written)."""
