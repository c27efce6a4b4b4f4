"""The committed world entry: valid, fresh (made by today's plugin code), on the world boards, and
reproducible by the same script CI publishes with (leaderboards/publish.sh, run here on one cell of
the undefended model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vlmbench.fingerprint import source_fingerprint
from vlmbench.names import parse_attack_name
from vlmbench.registry import plugins
from vlmbench.results import load_results

from browser_support import browser, watched  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "leaderboards" / "submissions"
ENTRY = SUBMISSIONS / "world"
REMAKE = "python -m vlmbench.leaderboards.world make leaderboards/submissions/world"


@pytest.fixture(scope="module")
def entry_rows() -> pd.DataFrame:
    return load_results(ENTRY / "results")


def test_the_world_entry_covers_every_built_in_defense_under_the_world_standard(entry_rows):
    from vlmbench.leaderboards import world
    from vlmbench.leaderboards.boards import load_standards

    standard = load_standards()["world"]
    built_in = set(world.TRAINING_DEFENSES) | set(world.TEST_TIME_DEFENSES)
    assert built_in == set(plugins().defenses.names())
    assert set(entry_rows["defense"]) == built_in
    for (defense, track), part in entry_rows.groupby(["defense", "track"]):
        cells = part.drop_duplicates("cell_id")
        assert set(cells["dataset"]) == set(standard.datasets), (defense, track)
        assert set(cells["attack"]) == set(standard.attacks), (defense, track)
        radii = {"1/255", "4/255"} if defense in world.TRAINING_DEFENSES else {"1/255"}
        assert set(cells["eps_label"]) == radii, (defense, track)
    tracks = entry_rows.drop_duplicates(["defense", "track"]).groupby("defense")["track"].agg(set)
    for name in world.TEST_TIME_DEFENSES:
        assert tracks[name] == {"oblivious", "adaptive"}
    recorded = json.loads((ENTRY / "commands.json").read_text())
    assert [c["args"] for c in recorded["commands"]] == world.commands()
    assert {cell for c in recorded["commands"] for cell in c["cells"]} == set(entry_rows["cell_id"])


def test_the_world_entry_was_made_by_the_current_plugin_code(entry_rows):
    """Cell ids cover the plugins' source fingerprints: an edited built-in plugin makes the committed
    entry stale, and CI would report its cells as 'stale' instead of reproduced."""
    registry = plugins()
    cells = entry_rows.drop_duplicates("cell_id")
    stale = set()
    for row in cells.itertuples():
        expected_defense = "+".join(source_fingerprint(registry.defenses.get(p)) for p in row.defense.split("+"))
        attack = registry.attacks.get(parse_attack_name(row.attack, registry.attacks.names())[0])
        if row.defense_fingerprint != expected_defense:
            stale.add(f"defense {row.defense}")
        if row.attack_fingerprint != source_fingerprint(attack):
            stale.add(f"attack {row.attack}")
        if row.dataset_fingerprint != source_fingerprint(registry.datasets.get(row.dataset)):
            stale.add(f"dataset {row.dataset}")
    assert not stale, f"the world entry is stale ({', '.join(sorted(stale))}): rerun `{REMAKE}` and commit it"


def test_the_world_entry_validates():
    from vlmbench.validate import validate

    assert validate(ENTRY) == []


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """leaderboards/publish.sh exactly as CI runs it, limited to one cell of the undefended model."""
    tmp_path = tmp_path_factory.mktemp("publish")
    env = dict(os.environ, REPRODUCE_DEFENSES="none", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               TMPDIR=str(tmp_path))
    site = tmp_path / "site"
    done = subprocess.run(["bash", str(ROOT / "leaderboards" / "publish.sh"), str(site), "5", "1"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    return site, done


def test_publish_script_reproduces_a_cell_and_builds_the_site(published):
    site, done = published
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout and ": ok" in done.stdout  # the submissions validated
    report = json.loads((site / "reproduction.json").read_text())
    assert report["seed"] == 5 and len(report["cells"]) == 1
    cell = report["cells"][0]
    assert cell["defense"] == "none" and cell["status"] == "reproduced", cell
    assert cell["differing_samples"] == 0  # same machine, same code: identical predictions
    index = (site / "index.html").read_text()
    assert "Reproduction" in index and "reproduced" in index
    boards = sorted(p.name for p in (site / "board").glob("world-*.html"))
    assert boards and all("oblivious" in b or "adaptive" in b for b in boards)
    none_row = [b for b in (site / "board").glob("world-linf-*-oblivious.html") if "reproduced: yes" in b.read_text()]
    assert none_row, "the board row of the re-run cell says it reproduced"


def test_the_published_index_in_a_real_browser(published, watched):
    """The real world site in headless Chromium: every world board and every built-in defense is on
    the index, the pages load without console errors; VLMBENCH_SCREENSHOT=PATH saves the README's picture."""
    from vlmbench.leaderboards import world

    site, done = published
    assert done.returncode == 0, done.stderr[-2000:]
    page = watched().goto((site / "index.html").as_uri())
    board_tables = page.locator("table[id^='index-world-']")
    assert board_tables.count() == 3  # 1/255 oblivious and adaptive, 4/255 oblivious
    text = page.inner_text("body")
    for name in (*world.TRAINING_DEFENSES, *world.TEST_TIME_DEFENSES):
        assert name in text
    assert page.locator("#reproduction-table tbody tr").count() == 1
    target = os.environ.get("VLMBENCH_SCREENSHOT")
    if target:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=target, full_page=False)
        assert Path(target).stat().st_size > 10_000
