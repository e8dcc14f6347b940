"""Shared infrastructure below every layer: input validation and the method registry."""
