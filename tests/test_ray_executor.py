"""The Ray executor on a real local Ray instance (2 CPUs): the same rows as the local executor, a worker
killed mid-cell retried without losing or duplicating a row, and one-line errors for what cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app

ray = pytest.importorskip("ray")

BASE = ["--model", "tiny-world", "--dataset", "world-shape,world-size", "--attack", "pgd-2,none", "--eps", "1/255",
        "--samples", "6", "--batch-size", "3", "--threads", "1", "--no-eps-sweep"]
TIMINGS = [c for c in results.SCHEMA.names if "time_s" in c]  # wall-clock columns differ run to run


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One real local Ray instance for the module (starting one takes seconds); the executor joins it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def invoke(plugins: list[Path], output: Path, *extra: str, base: list[str] = BASE):
    sources = [arg for plugin in plugins for arg in ("--plugin", str(plugin))]
    return CliRunner().invoke(app, ["run", *base, *sources, "--output", str(output), *extra])


def rows_of(output: Path) -> pd.DataFrame:
    rows = results.load_results(output).drop(columns=TIMINGS)
    return rows.sort_values(["cell_id", "sample_index"]).reset_index(drop=True)


def dying_attack(tmp_path: Path) -> tuple[Path, Path]:
    """A PGD that kills its own process (as the OOM killer would) on the second batch it attacks, once:
    the marker file, written just before, lets the restarted worker through."""
    marker = tmp_path / "died-once"
    source = tmp_path / "dying_attack.py"
    source.write_text(
        "import os\n"
        "from pathlib import Path\n"
        "from vlmbench.attack import Attack\n"
        "from vlmbench.attacks.pgd import cross_entropy_loss, pgd\n"
        "CALLS = [0]\n"
        "class DyingPGD(Attack):\n"
        "    name = 'toy-dying-pgd'\n"
        "    description = 'test attack: PGD whose process dies on its second batch, once'\n"
        "    def perturb(self, model, x, y, generator):\n"
        "        CALLS[0] += 1\n"
        f"        marker = Path({str(marker)!r})\n"
        "        if CALLS[0] == 2 and not marker.exists():\n"
        "            marker.write_text(str(os.getpid()))\n"
        "            os._exit(1)\n"
        "        return pgd(model, x, y, self.threat, cross_entropy_loss, generator)\n"
    )
    return source, marker


def test_ray_run_gives_exactly_the_local_executors_rows(local_ray, tiny_model_plugin_file, tmp_path):
    local = invoke([tiny_model_plugin_file], tmp_path / "local")
    assert local.exit_code == 0, local.output
    on_ray = invoke([tiny_model_plugin_file], tmp_path / "ray", "--executor", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    assert "4 cells (0 already complete, 0 resumed)" in on_ray.output
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.parquet")) == sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    pd.testing.assert_frame_equal(rows_of(tmp_path / "ray"), rows_of(tmp_path / "local"))
    again = invoke([tiny_model_plugin_file], tmp_path / "ray", "--executor", "ray")
    assert again.exit_code == 0 and "4 cells (4 already complete" in again.output


def test_a_worker_killed_mid_cell_is_retried_and_no_row_is_lost_or_duplicated(local_ray, tiny_model_plugin_file, tmp_path):
    attack, marker = dying_attack(tmp_path)
    one_cell = ["--model", "tiny-world", "--dataset", "world-shape", "--attack", "toy-dying-pgd-2", "--samples", "6",
                "--batch-size", "3", "--threads", "1", "--no-eps-sweep"]  # two batches
    on_ray = invoke([tiny_model_plugin_file, attack], tmp_path / "ray", "--executor", "ray", base=one_cell)
    assert on_ray.exit_code == 0, on_ray.output
    assert marker.exists()  # a worker did die, after staging its first batch
    assert "1 cells (0 already complete, 1 resumed)" in on_ray.output  # the retry resumed from the staged batch
    local = invoke([tiny_model_plugin_file, attack], tmp_path / "local", base=one_cell)  # the marker exists: nobody dies
    assert local.exit_code == 0, local.output
    got, want = rows_of(tmp_path / "ray"), rows_of(tmp_path / "local")
    assert len(got) == 6 and not got.duplicated(["cell_id", "sample_index"]).any()
    pd.testing.assert_frame_equal(got, want)


def test_an_error_in_a_cell_stops_the_run_with_its_own_message(local_ray, tiny_model_plugin_file, tmp_path):
    broken = Path(__file__).parent / "plugins" / "broken_defenses.py"
    one_cell = ["--model", "tiny-world", "--dataset", "world-shape", "--attack", "none", "--samples", "2", "--threads", "1"]
    result = invoke([tiny_model_plugin_file, broken], tmp_path / "out", "--executor", "ray", "--defense", "nan-logits",
                    base=one_cell)
    assert result.exit_code == 2, result.output
    assert "non-finite logits" in result.output and "Traceback" not in result.output


def test_an_unreachable_cluster_is_a_one_line_error(tiny_model_plugin_file, tmp_path):
    result = invoke([tiny_model_plugin_file], tmp_path / "out", "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused (is `ray start --head` running there, "
        "and the port open?)"]
    assert not (tmp_path / "out").exists()
    assert invoke([tiny_model_plugin_file], tmp_path / "out", "--ray-address", "auto").exit_code == 2  # needs --executor ray
