"""rs-edit backend: prompt-guided editing of one georeferenced remote-sensing tile."""

__version__ = "0.2.0"
