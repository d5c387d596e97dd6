"""The toolkit's version: `fer --version`, the wheel's metadata, and the provenance every result file records."""

__version__ = "0.2.0"
