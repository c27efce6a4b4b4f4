"""The built wheel: plugin folders inside the vlmbench namespace, assets included, and a toy evaluation
run from the wheel's own code (as HELM's CI does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("uv") is None:
        pytest.fail("uv is required to build the wheel (the README's setup installs it)")
    source = tmp_path_factory.mktemp("src")
    for item in ("pyproject.toml", "README.md", "vlmbench", "attacks", "defenses", "leaderboards"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, source / item, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / item).is_dir() else {}))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("vlmbench-*.whl")
    return built


def test_wheel_installs_plugins_under_the_vlmbench_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"vlmbench", next(n for n in top_level if n.endswith(".dist-info"))}
    assert "vlmbench/attacks/pgd.py" in names and "vlmbench/defenses/none.py" in names
    for model in ("world-vit", "world-rn"):
        for file in ("open_clip_config.json", "open_clip_model.safetensors"):
            assert f"vlmbench/world/assets/{model}/{file}" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for group in ("[vlmbench.attacks]", "[vlmbench.defenses]", "[vlmbench.datasets]", "[vlmbench.models]"):
        assert group in entry_points


def test_toy_evaluation_runs_from_the_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is a zip of the installed files
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "VLMBENCH_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-c", "import vlmbench, sys; print(vlmbench.__file__); "
               "from vlmbench.cli import app; sys.argv[0] = 'vlmbench'; app()",
               "run", "--model", "world-vit", "--dataset", "world-size", "--attack", "pgd-2", "--samples", "8",
               "--threads", "1", "--output", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(target))  # the wheel's code, not the checkout's
    assert "world-size" in done.stdout
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 1
