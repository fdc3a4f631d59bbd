"""An example third-party visionlens plugin (see README.md)."""

__version__ = "0.1.0"
