"""buntime: a multi-app HTTP runtime for Python, built on Twisted."""

__version__ = "0.1.0"
