"""What the bench scripts print: their figures as a Markdown table, and the report's end."""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """`rows` (the first is the header) as a Markdown table, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def finish(report: dict, started: float, render: Callable[[dict], str], json_path: Path | None) -> dict:
    """Close a bench run's `report`: its seconds since `started` (a perf_counter reading) and the
    load average after it (other work on the machine skews every figure), printed as `render`
    makes it, and written as JSON to `json_path` if given."""
    report["seconds"] = time.perf_counter() - started
    report["load_average_after"] = os.getloadavg()[0]
    print(render(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
