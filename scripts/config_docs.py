#!/usr/bin/env python3
"""Rewrite docs/configuration.md's table of settings from the settings model (the same list as
`edge-agent config --describe`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.config import describe_fields  # noqa: E402

START = "<!-- config-table:start (scripts/config_docs.py rewrites this part) -->"
END = "<!-- config-table:end -->"


def table() -> str:
    rows = ["| key | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k}` | `{env}` | {d} | {desc} |" for k, env, d, desc in describe_fields()]
    return "\n".join(rows)


def main() -> int:
    page = ROOT / "docs" / "configuration.md"
    text = page.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    page.write_text(text[:a] + "\n" + table() + "\n" + text[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
