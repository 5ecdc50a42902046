"""jobworker: a secure remote job runner for Linux."""

__version__ = "0.1.0"
