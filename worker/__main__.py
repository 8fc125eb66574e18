"""``python -m worker`` is the same program as ``logit-router``."""

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
