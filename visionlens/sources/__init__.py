"""Library loaders that build the raw source modules (no wrapping)."""
