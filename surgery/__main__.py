"""``python -m surgery``: the command line."""
import sys

from surgery.cli import main

if __name__ == "__main__":
    sys.exit(main())
