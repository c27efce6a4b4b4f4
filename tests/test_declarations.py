"""Defenses declare their paper, code and the paper's reported figures; every result file records them
in its run metadata (never in the protocol), and a bad declaration is refused with one line."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.defense import Defense, check_declarations
from vlmbench.protocol import ReportedFigure
from vlmbench.registry import PluginError, plugins

ROOT = Path(__file__).resolve().parent.parent
BUILT_IN = ("tecoa", "pmg_aft", "fare", "tga_zsr", "hpt_gpd", "hierarchical", "ttc", "scc", "clipure_cos")
TINY = ["--model", "tiny-world", "--dataset", "world-shape", "--attack", "pgd-2", "--eps", "2/255",
        "--samples", "4", "--batch-size", "4", "--threads", "1", "--no-eps-sweep", "--adaptive-steps", "0"]


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def run(model_plugin: Path, output: Path, *extra: str):
    return CliRunner().invoke(app, ["run", *TINY, "--plugin", str(model_plugin), "--output", str(output), *extra])


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_defense_declares_its_paper_and_its_reported_figures(name):
    cls = plugins().defenses.get(name)
    assert is_http_url(cls.paper), cls.paper
    assert cls.code is None or is_http_url(cls.code), cls.code
    # HPT-GPD, hierarchical: no first-hand figure was available (hierarchical's paper only through notes),
    # so they declare none rather than a second-hand one
    assert isinstance(cls.reported, tuple) and (bool(cls.reported) or name in ("hpt_gpd", "hierarchical"))
    for figure in cls.reported:
        assert isinstance(figure, ReportedFigure)
        assert math.isfinite(figure.value) and 0 <= figure.value <= 100
        assert figure.metric in ("robust", "clean") and figure.norm in ("linf", "l2")
        assert re.fullmatch(r"\d+/255|\d+(\.\d+)?", figure.eps_label), figure.eps_label
        for text in (figure.dataset, figure.attack, figure.model, figure.protocol, figure.source):
            assert text.strip() and "\n" not in text
        assert "shared/" not in figure.source  # cite the paper, not a team folder
    assert check_declarations(cls) is None


def test_the_baseline_declares_no_paper():
    cls = plugins().defenses.get("none")
    assert cls.paper is None and cls.code is None and cls.reported == ()
    assert check_declarations(cls) is None


def test_the_docs_example_is_a_valid_declaration():
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("## Paper, code and reported figures", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    body = textwrap.indent(code.split("\n\n", 1)[1], "    ")
    namespace: dict = {}
    exec("from typing import ClassVar\nfrom vlmbench.defense import Defense\n" + code.split("\n\n", 1)[0]
         + "\nclass Example(Defense):\n    name = 'example'\n    description = 'docs example'\n" + body, namespace)
    example = namespace["Example"]
    assert example.reported and check_declarations(example) is None


def test_a_run_records_the_declarations_of_every_part(tiny_model_plugin_file, tmp_path):
    """A composed defense records both parts; the protocol (hence the cell id) holds none of it."""
    from vlmbench.defenses.ttc import TTC

    result = run(tiny_model_plugin_file, tmp_path / "out", "--defense", "none+ttc", "--track", "oblivious")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out").glob("*.parquet")
    recorded = results.run_metadata_of(path)["defenses"]
    assert set(recorded) == {"none", "ttc"}
    assert recorded["none"] == {"kind": "none", "stochastic": False, "non_differentiable": [], "paper": None,
                                "code": None, "reported": []}
    ttc = recorded["ttc"]
    assert ttc["kind"] == "test-time" and ttc["stochastic"] is True and ttc["non_differentiable"] == ["counterattack"]
    assert ttc["paper"] == TTC.paper and ttc["code"] == TTC.code
    assert ttc["reported"] == [dataclasses.asdict(f) for f in TTC.reported]
    assert [ReportedFigure(**f) for f in ttc["reported"]] == list(TTC.reported)  # round-trips
    protocol = results.load_results(tmp_path / "out")["protocol"].iloc[0]
    for key in ("paper", "reported", "arxiv.org", "Table 1"):
        assert key not in protocol
    assert "defenses" not in json.loads(protocol)


def test_declarations_do_not_change_the_cell_id(tiny_model_plugin_file, tmp_path, monkeypatch):
    """The same run with other declarations (same source file, so the same fingerprint) is the same cell."""
    from vlmbench.defenses.tecoa import TeCoA
    from vlmbench.defenses.ttc import TTC

    first = run(tiny_model_plugin_file, tmp_path / "a", "--defense", "ttc", "--track", "oblivious")
    assert first.exit_code == 0, first.output
    monkeypatch.setattr(TTC, "paper", "https://example.org/another-paper")
    monkeypatch.setattr(TTC, "reported", TeCoA.reported)
    second = run(tiny_model_plugin_file, tmp_path / "b", "--defense", "ttc", "--track", "oblivious")
    assert second.exit_code == 0, second.output
    (a,), (b,) = (tmp_path / "a").glob("*.parquet"), (tmp_path / "b").glob("*.parquet")
    assert a.name == b.name  # the file name ends with the cell id
    ids = [set(results.load_results(folder)["cell_id"]) for folder in (tmp_path / "a", tmp_path / "b")]
    assert ids[0] == ids[1]
    assert results.run_metadata_of(b)["defenses"]["ttc"]["paper"] == "https://example.org/another-paper"
    assert results.run_metadata_of(a)["defenses"]["ttc"]["paper"] == "https://arxiv.org/abs/2503.03613"


BAD = '''
from typing import ClassVar
from vlmbench.defense import Defense
from vlmbench.protocol import ReportedFigure


class Bad(Defense):
    name: ClassVar[str] = "bad-declaration"
    description: ClassVar[str] = "declares {what}"
    {declaration}
'''

FIGURE = ('ReportedFigure(value={value}, metric="{metric}", dataset="cifar10", attack="PGD-10", eps_label="1/255", '
          'norm="{norm}", model="ViT-B-32:openai", protocol="p", source="Table 1")')


@pytest.mark.parametrize(("declaration", "message"), [
    ('paper: ClassVar[str] = "javascript:alert(1)"', "paper is 'javascript:alert(1)'"),
    ('code: ClassVar[str] = "github.com/x/y"', "expected None or an http(s) URL"),
    ("reported = (" + FIGURE.format(value=150, metric="robust", norm="linf") + ",)", "reported[0] has value 150"),
    ("reported = (" + FIGURE.format(value='float("nan")', metric="robust", norm="linf") + ",)", "value nan"),
    ("reported = (" + FIGURE.format(value=40, metric="accuracy", norm="linf") + ",)", "metric 'accuracy'"),
    ("reported = (" + FIGURE.format(value=40, metric="clean", norm="linf2") + ",)", "norm 'linf2'"),
    ("reported = [" + FIGURE.format(value=40, metric="clean", norm="linf") + "]", "expected a tuple"),
    ("reported = ({'value': 40},)", "expected a vlmbench.protocol.ReportedFigure"),
])
def test_a_bad_declaration_is_refused_with_one_line(declaration, message, tiny_model_plugin_file, tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(BAD.format(what=message.replace('"', ""), declaration=declaration))
    result = run(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(source), "--defense", "bad-declaration")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "defense 'bad-declaration'" in line and message in line, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_a_declaration_changed_after_the_class_is_checked_when_loaded(monkeypatch):
    """The registry checks a defense's declarations when it loads it, not only when the class is made."""
    cls = plugins().defenses.get("ttc")
    monkeypatch.setattr(cls, "reported", (dataclasses.replace(cls.reported[0], value=math.inf),))
    from vlmbench import registry

    registry.reset()
    with pytest.raises(PluginError, match=r"defense 'ttc' .*reported\[0\] has value inf"):
        plugins().defenses.get("ttc")
    assert issubclass(cls, Defense)
