"""The package version, in one place (imported by whoever needs it, never by ``__init__`` back)."""

__version__ = "0.1.0"
