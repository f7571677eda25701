"""Markdown helpers shared by model cards, drift summaries and Prefect artifacts."""
from __future__ import annotations


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; cells are converted with str() and pipes escaped."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])
