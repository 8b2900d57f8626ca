"""The package version, in a module of its own so that any layer can read it without
importing the package root (and with it every room)."""

__version__ = "0.1.0"
