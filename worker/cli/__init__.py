"""The command line: ``logit-router`` and ``python -m worker`` both call ``main``."""

from worker.cli.main import main

__all__ = ["main"]
