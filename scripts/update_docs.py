"""Regenerate the generated parts of the docs from the registry.

    python scripts/update_docs.py          # rewrite README's catalogue table
    python scripts/update_docs.py --check  # exit 1 if it is stale

The README table is ``blockzoo list --format markdown`` between the markers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blockzoo.cli import catalogue_markdown

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


def updated_readme(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{catalogue_markdown()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = updated_readme(old)
    if args.check:
        if new != old:
            print("README.md catalogue is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
