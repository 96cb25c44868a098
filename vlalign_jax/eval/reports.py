"""How evaluation commands hand back results: the markdown table on stdout and, when asked, the
results as JSON with the table beside it (`X.json` and `X.md`), so they can be plotted or pasted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(results: dict[str, Any], table: str, out: str | Path | None) -> None:
    """Print `table`; with `out`, write `results` there as JSON and `table` to the `.md` beside it."""
    print(table)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(table + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
