"""Run every benchmark (or those named) and print their tables.

    .venv/bin/python -m bench [NAME ...] [--option ...]

Options after the names go to each named benchmark (`python -m bench inference --size 1024`).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HELPERS = {"common"}


def main(args: list[str]) -> None:
    here = Path(__file__).parent
    found = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
                   and m.name not in HELPERS)
    split = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = args[:split], args[split:]
    if options and not names:
        sys.exit("name the benchmark the options are for: python -m bench NAME --option ...")
    for name in names or found:
        if name not in found:
            sys.exit(f"no benchmark {name!r}; known: {', '.join(found)}")
        print(f"\n== {name}")
        bench = importlib.import_module(f"bench.{name}")
        bench.main(options) if options else bench.main()


if __name__ == "__main__":
    main(sys.argv[1:])
