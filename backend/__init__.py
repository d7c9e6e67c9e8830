"""rs-edit backend: prompt-guided editing of one georeferenced remote-sensing tile."""

__version__ = "0.1.0"
