"""Print the configuration table of docs/deployment.md from config.Settings (tests check the docs hold it).

    .venv/bin/python scripts/settings_table.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402


def show_default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{os.path.relpath(value, ROOT)}`"
    return f"`{value}`"


def table() -> str:
    """One Markdown row per setting: environment variable, default, description."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{name.upper()}` | {show_default(field.default)} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
