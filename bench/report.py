"""What the bench scripts print: their figures as a Markdown table."""


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """`rows` (the first is the header) as a Markdown table, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)
