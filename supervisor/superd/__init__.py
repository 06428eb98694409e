"""superd: a small, event-driven process supervisor for Linux."""

__version__ = "0.1.0"
