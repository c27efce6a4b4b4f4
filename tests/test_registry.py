"""Discovery through real entry points, collisions, suggestions, broken plugins and --plugin sources."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmbench import registry
from vlmbench.attack import Attack
from vlmbench.cli import app
from vlmbench.defense import Defense
from vlmbench.registry import PluginError, plugins

THIRD_PARTY = textwrap.dedent(
    '''
    from typing import ClassVar
    from vlmbench.defense import Defense

    class JitterDefense(Defense):
        name: ClassVar[str] = "jitter"
        description: ClassVar[str] = "third-party test defense"
    '''
)


def install_fake_distribution(root: Path, dist: str, module: str, source: str, entry_points: str) -> None:
    """Write ``module.py`` and a ``dist-info`` with ``entry_points.txt`` into ``root`` (a sys.path entry)."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]


def test_builtin_plugins_come_from_entry_points():
    assert {"none", "pgd", "cw"} <= set(plugins().attacks.names())
    assert "none" in plugins().defenses.names()
    assert {"world-vit", "world-rn"} <= set(plugins().models.names())
    assert len([n for n in plugins().datasets.names() if n.startswith("world-")]) >= 6
    assert issubclass(plugins().attacks.get("pgd"), Attack)
    assert issubclass(plugins().defenses.get("none"), Defense)


def test_out_of_tree_plugin_is_discovered_through_its_entry_point(site):
    install_fake_distribution(
        site, "thirdparty_jitter", "thirdparty_jitter", THIRD_PARTY,
        "[vlmbench.defenses]\njitter = thirdparty_jitter:JitterDefense\n",
    )
    registry.reset()
    defense = plugins().defenses.get("jitter")
    assert defense.__name__ == "JitterDefense" and defense.kind() == "none"
    result = CliRunner().invoke(app, ["list", "defenses"])
    assert result.exit_code == 0 and "jitter" in result.output and "third-party test defense" in result.output


def test_lazy_loading_does_not_import_until_asked(site):
    install_fake_distribution(
        site, "thirdparty_lazy", "thirdparty_lazy", THIRD_PARTY,
        "[vlmbench.defenses]\njitter = thirdparty_lazy:JitterDefense\n",
    )
    registry.reset()
    assert "jitter" in plugins().defenses
    assert "thirdparty_lazy" not in sys.modules
    plugins().defenses.get("jitter")
    assert "thirdparty_lazy" in sys.modules


def test_name_collision_is_a_hard_error(site):
    install_fake_distribution(
        site, "thirdparty_clash", "thirdparty_clash", THIRD_PARTY,
        "[vlmbench.attacks]\npgd = thirdparty_clash:JitterDefense\n",
    )
    registry.reset()
    with pytest.raises(PluginError, match="name collision: 'pgd'"):
        plugins()


def test_broken_plugin_is_reported_and_does_not_break_others(site):
    install_fake_distribution(
        site, "thirdparty_broken", "thirdparty_broken", "raise ImportError('missing dependency foo')\n",
        "[vlmbench.defenses]\nbroken = thirdparty_broken:Nothing\n",
    )
    install_fake_distribution(
        site, "thirdparty_wrongtype", "thirdparty_wrongtype", "class NotADefense:\n    name = 'x'\n",
        "[vlmbench.defenses]\nwrongtype = thirdparty_wrongtype:NotADefense\n",
    )
    registry.reset()
    with pytest.raises(PluginError, match="'broken'.*failed to load: ImportError: missing dependency foo"):
        plugins().defenses.get("broken")
    with pytest.raises(PluginError, match="expected a subclass of vlmbench.defense.Defense"):
        plugins().defenses.get("wrongtype")
    assert plugins().defenses.get("none").name == "none"
    result = CliRunner().invoke(app, ["list", "defenses"])
    assert result.exit_code == 0
    assert "broken" in result.output and "missing dependency foo" in result.output and "none" in result.output


def test_unknown_names_suggest_close_matches():
    with pytest.raises(PluginError, match=r"unknown attack 'pgdd'; did you mean 'pgd'"):
        plugins().attacks.get("pgdd")
    with pytest.raises(PluginError, match=r"unknown defense 'xyzzy'; known: .*\bnone\b"):
        plugins().defenses.get("xyzzy")


def test_plugin_source_from_a_python_file(tmp_path):
    path = tmp_path / "my_defense.py"
    path.write_text(THIRD_PARTY)
    found = plugins().load_source(str(path))
    assert found == ["defenses/jitter"]
    assert plugins().defenses.get("jitter").description == "third-party test defense"


def test_plugin_source_errors_are_one_line(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        plugins().load_source(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("import definitely_not_a_module_xyz\n")
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        plugins().load_source(str(bad))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PluginError, match="defines no defense, attack, dataset or model"):
        plugins().load_source(str(empty))


def test_plugin_source_that_reimports_builtins_registers_only_its_own(tmp_path):
    path = tmp_path / "reexport.py"
    path.write_text(THIRD_PARTY + "from vlmbench.world.datasets import WORLD_SHAPE\nfrom vlmbench.attacks.pgd import PGD\n")
    assert plugins().load_source(str(path)) == ["defenses/jitter"]


def test_cli_list_rejects_unknown_kind():
    result = CliRunner().invoke(app, ["list", "defence"])
    assert result.exit_code == 2
    assert "unknown plugin kind 'defence'; did you mean 'defenses'?" in result.output
