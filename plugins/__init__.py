"""Built-in analyses, each registered through the `visionlens` entry-point group."""
