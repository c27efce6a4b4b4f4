"""Documentation that must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from vlmbench.results import SCHEMA_VERSION, describe_schema

ROOT = Path(__file__).resolve().parent.parent


def test_results_schema_doc_lists_exactly_the_schema():
    text = (ROOT / "docs" / "results-schema.md").read_text()
    documented = re.findall(r"^\| `([a-z_0-9]+)` \| ([a-z0-9]+) \| (.+) \|$", text, flags=re.M)
    assert documented == describe_schema()
    assert f"version {SCHEMA_VERSION}" in text
