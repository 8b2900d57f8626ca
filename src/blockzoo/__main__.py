"""``python -m blockzoo`` runs the CLI."""

import sys

from blockzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
