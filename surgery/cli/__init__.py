"""The `surgery` command line: one dispatcher (`main`), shared argument types (`args`), one module per command group."""
from surgery.cli.main import main

__all__ = ["main"]
