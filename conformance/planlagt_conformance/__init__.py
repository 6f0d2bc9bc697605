"""Conformance suite for planlagt backends."""
