"""Print the options table of README.md and docs/inputs.md from core.options (tests check the docs hold it).

    .venv/bin/python scripts/options_table.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.options import markdown_table  # noqa: E402

if __name__ == "__main__":
    print(markdown_table())
