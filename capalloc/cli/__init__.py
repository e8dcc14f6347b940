"""The command line: argument parsing and printing only (``capalloc --help``)."""

from capalloc.cli.main import main

__all__ = ["main"]
