"""Run every benchmark module (or those named) and print their tables."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(names: list[str]) -> None:
    here = Path(__file__).parent
    found = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    for name in names or found:
        if name not in found:
            sys.exit(f"no benchmark {name!r}; known: {', '.join(found)}")
        print(f"\n== {name}")
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
