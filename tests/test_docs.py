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


def test_plugin_example_in_the_docs_works(tmp_path):
    """The defense of docs/plugins.md registers through --plugin and defends a classifier."""
    import torch

    from conftest import TinyLinearClassifier
    from vlmbench.defense import DefenseContext
    from vlmbench.registry import plugins

    text = (ROOT / "docs" / "plugins.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    source = tmp_path / "my_defense.py"
    source.write_text(code)
    assert plugins().load_source(str(source)) == ["defenses/my_defense"]
    defense_cls = plugins().defenses.get("my_defense")
    assert defense_cls.stochastic and defense_cls.kind() == "test-time"
    defended = defense_cls().wrap(TinyLinearClassifier(), DefenseContext(tmp_path, torch.device("cpu"), 0))
    x = torch.rand(2, 3, 8, 8)
    assert defended(x).shape == (2, 5)
    assert not torch.equal(defended(x), defended(x))  # its forward pass is random, as declared
