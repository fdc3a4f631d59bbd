"""The package version (one place; read by the CLI and packaging)."""

__version__ = "0.1.0"
