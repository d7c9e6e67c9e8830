"""The HTTP backend (`rs-edit serve`)."""
