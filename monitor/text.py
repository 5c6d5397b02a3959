"""Plain-text tables for terminals (the CLI's listings and the demo's report)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(rows: Iterable[Sequence], headers: Sequence[str]) -> str:
    """Rows under headers, columns padded to their widest cell; None prints as nothing."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
