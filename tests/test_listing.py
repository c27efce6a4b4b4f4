"""`vlmbench list` answers from a cache of listing rows keyed by the plugins' source files, so a
second listing imports no plugin and no torch; an edit, a corrupt cache or a dataset whose status
cannot be cached makes it ask the plugin again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmbench import listing
from vlmbench.data import DatasetPlugin
from vlmbench.registry import Registry, plugins

ROOT = Path(__file__).resolve().parents[1]

_LIST = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from vlmbench.cli import app
    result = CliRunner().invoke(app, ["list"])
    print(json.dumps([result.exit_code, result.output, "torch" in sys.modules]))
    """
)


def _list_in_fresh_interpreter(cache: Path) -> tuple[int, str, bool]:
    env = dict(os.environ, VLMBENCH_CACHE=str(cache), COLUMNS="250")
    done = subprocess.run([sys.executable, "-c", _LIST], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def test_second_list_is_the_same_table_without_importing_torch(tmp_path):
    first_code, first, first_torch = _list_in_fresh_interpreter(tmp_path)
    second_code, second, second_torch = _list_in_fresh_interpreter(tmp_path)
    assert first_code == second_code == 0
    assert first_torch, "the first listing has to import the plugins"
    assert not second_torch, "the second listing imported torch"
    assert second == first
    assert "counterattack" in second and "world-shape" in second and "AutoAttack" in second


class _Refuses:
    """A registry stand-in that fails if any plugin is imported."""

    def __init__(self, kind: str, origins: dict[str, str]) -> None:
        self.kind, self._origins = kind, origins

    def origins(self) -> dict[str, str]:
        return dict(self._origins)

    def get(self, name: str):
        raise AssertionError(f"imported {name} although its row is cached")


def test_dataset_status_is_evaluated_on_every_call_from_the_cached_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    real = plugins().datasets
    list(listing.rows(real, None))  # fills the cache
    cached = _Refuses("datasets", {n: real.origins()[n] for n in ("cifar10", "world-shape")})
    data_root = tmp_path / "data"
    before = {name: cells[-1] for name, cells, _ in listing.rows(cached, data_root)}
    folder = data_root / real.get("cifar10").layout.folder
    folder.mkdir(parents=True)
    after = {name: cells[-1] for name, cells, _ in listing.rows(cached, data_root)}
    assert before == {"cifar10": "missing", "world-shape": "generated"}
    assert after == {"cifar10": "ready", "world-shape": "generated"}
    assert real.get("cifar10").status(data_root) == "ready"  # the plugin's own answer agrees


def _package(root: Path, description: str) -> None:
    (root / "listpkg").mkdir(exist_ok=True)
    (root / "listpkg" / "__init__.py").write_text("")
    (root / "listpkg" / "helper.py").write_text("SCALE = 1\n")
    (root / "listpkg" / "attack.py").write_text(textwrap.dedent(f'''
        from vlmbench.attack import Attack
        from listpkg import helper

        class Probe(Attack):
            name = "probe"
            description = {description!r}
            def perturb(self, model, images, labels, threat, generator):
                return images
    '''))


def test_editing_the_plugin_or_a_module_beside_it_changes_the_key(tmp_path, monkeypatch):
    _package(tmp_path, "first")
    monkeypatch.syspath_prepend(str(tmp_path))
    key = listing._key("attacks", "probe", "listpkg.attack:Probe")
    assert key is not None and key == listing._key("attacks", "probe", "listpkg.attack:Probe")
    (tmp_path / "listpkg" / "helper.py").write_text("SCALE = 2\n")
    after_helper = listing._key("attacks", "probe", "listpkg.attack:Probe")
    _package(tmp_path, "second")
    after_edit = listing._key("attacks", "probe", "listpkg.attack:Probe")
    assert len({key, after_helper, after_edit}) == 3
    assert listing._key("attacks", "probe", "plugin.py:Probe") is None  # --plugin files are never cached
    assert listing._key("attacks", "probe", "no_such_module_xyz:Probe") is None


def test_a_stale_row_is_rebuilt_and_a_corrupt_cache_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path))
    registry = plugins().attacks
    fresh = {name: cells for name, cells, _ in listing.rows(registry, None)}
    cache = tmp_path / "listing.json"
    data = json.loads(cache.read_text())
    data["rows"]["attacks/pgd"]["key"] = "stale"
    data["rows"]["attacks/pgd"]["description"] = "written by an old version"
    cache.write_text(json.dumps(data))
    assert {name: cells for name, cells, _ in listing.rows(registry, None)} == fresh
    cache.write_text('{"format": 1, "rows": {"attacks/pgd": ')  # truncated
    assert {name: cells for name, cells, _ in listing.rows(registry, None)} == fresh
    assert json.loads(cache.read_text())["rows"]["attacks/pgd"]["description"] == fresh["pgd"][0]


class _AsksTheDisk(DatasetPlugin):
    """A third-party dataset that overrides status() itself: its status cannot be cached."""

    name = "asks-the-disk"
    description = "status from a marker file"

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def load(self, data_root, split=None):
        raise NotImplementedError

    def status(self, data_root):
        return "ready" if self.marker.exists() else "missing"


def test_a_dataset_that_overrides_status_is_asked_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "marker"
    registry = Registry("datasets", lambda value: None)
    registry.add("asks-the-disk", "tests.test_listing:_AsksTheDisk", lambda: _AsksTheDisk(marker))
    assert _AsksTheDisk(marker).status_rule() is None
    assert [cells[-1] for _, cells, _ in listing.rows(registry, None)] == ["missing"]
    marker.touch()
    assert [cells[-1] for _, cells, _ in listing.rows(registry, None)] == ["ready"]
    assert not (tmp_path / "cache" / "listing.json").exists()  # nothing cacheable was found


@pytest.mark.parametrize("rule", [("fixed", "generated"), ("folder", "x")])
def test_status_rules(tmp_path, rule):
    expected = {"fixed": "generated", "folder": "ready"}[rule[0]]
    (tmp_path / "x").mkdir()
    assert listing.status_from_rule(rule, tmp_path) == expected
    assert listing.status_from_rule(("folder", "x"), None) == "missing"
    with pytest.raises(ValueError):
        listing.status_from_rule(("sometimes", "x"), tmp_path)
