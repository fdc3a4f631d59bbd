"""Circuits-thread analyses."""
