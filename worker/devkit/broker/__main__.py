"""``python -m worker.devkit.broker``: run a throwaway Kafka broker until SIGTERM/SIGINT."""

import sys

from worker.devkit.broker.cli import main

if __name__ == "__main__":
    sys.exit(main())
