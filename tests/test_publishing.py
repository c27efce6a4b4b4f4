"""Publishing: the CI entry point is the README's test command, and the GitHub Pages workflow is a
valid workflow (checked offline against check-jsonschema's bundled GitHub-workflow schema) that runs
the same build script as the test suite."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboard.yml"


def _readme_block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(marker)
    return re.search(r"```bash\n(.*?)\n```", text[start:], re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_block_after("Set up and run the test suite")
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == command
    assert "apt-get install" in command and "chromium" in command and command.endswith("uv run --frozen --extra test pytest")


def test_workflow_matches_the_github_workflow_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    assert checker.exists(), "check-jsonschema is part of the test extra"
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_workflow_fails_the_schema_check(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest", 1))
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0


def test_workflow_installs_with_the_readme_command_and_publishes_with_the_pages_actions():
    import yaml

    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"]
    assert flow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build, deploy = flow["jobs"]["build"], flow["jobs"]["deploy"]
    runs = [step.get("run", "") for step in build["steps"]]
    main_command = _readme_block_after("Run the default evaluation")
    install_prefix = main_command.split(" vlmbench ")[0]  # "pip install uv && uv run --frozen"
    assert any(run.startswith(install_prefix + " vlmbench") for run in runs)
    assert any("leaderboards/publish.sh _site" in run for run in runs)
    uses = [step.get("uses", "") for step in build["steps"]]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    upload = next(step for step in build["steps"] if step.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_site"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert deploy["steps"][0]["uses"].startswith("actions/deploy-pages@") and deploy["steps"][0]["id"] == "deployment"
