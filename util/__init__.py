"""Shared building blocks of the entry scripts, one module per concern."""
