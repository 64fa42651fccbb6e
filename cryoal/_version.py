"""The package version, in a module of its own so that anything can read it without importing
the package's public API (which imports the pool and, lazily, the checkpoint loader)."""

__version__ = "0.1.0"
