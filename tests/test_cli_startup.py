"""Start-up of the CLI: help, --version and bad options answer without importing torch; option
pre-checks; one-line disk errors; missing weights; plan notes; `list` columns without open_clip."""

from __future__ import annotations

import ast
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmbench.cli import app
from vlmbench.errors import VlmbenchError
from vlmbench.preflight import split_values, validate_request_options
from vlmbench.registry import plugins

ROOT = Path(__file__).resolve().parents[1]

# (arguments, a fragment of the one-line error); an empty fragment: exit 0 (help, version)
TORCH_FREE = [
    (["--help"], ""),
    (["--version"], ""),
    (["run", "--help"], ""),
    (["run", "--eps", ""], "--eps '' is empty"),
    (["run", "--attack", ""], "--attack '' is empty"),
    (["run", "--eps", "abc"], "bad ε 'abc'"),
    (["run", "--eps", "1e-3x"], "bad ε '1e-3x'"),
    (["run", "--eps", "8"], "did you mean 8/255"),
    (["run", "--threads", "0"], "bad number of threads 0 (--threads)"),
    (["run", "--threads", "-3"], "bad number of threads -3 (--threads)"),
    (["run", "--seed", "-1", "--selection", "random", "--samples", "3"], "bad --seed -1"),
    (["run", "--defense", "nonee"], "did you mean 'none'"),
    (["run", "--defense", "tecoa+ttcc"], "unknown defense 'ttcc'; did you mean 'ttc'"),
    (["run", "--attack", "pgdd-10"], "unknown attack 'pgdd'; did you mean 'pgd'"),
    (["run", "--dataset", "world-shap"], "did you mean 'world-shape'"),
    (["run", "--dataset", "nosuch-*"], "no dataset matches 'nosuch-*'"),
    (["run", "--norm", "l3"], "unknown norm 'l3'"),
    (["run", "--track", "sideways"], "bad track 'sideways'"),
    (["run", "--batch-size", "0"], "bad batch size 0"),
    (["run", "--samples", "0"], "bad number of samples 0"),
    (["run", "--eval-draws", "0"], "bad number of evaluation draws 0 (--eval-draws)"),
    (["run", "--adaptive-steps", "-1"], "bad number of adaptive steps -1 (--adaptive-steps)"),
    (["run", "--model", "ViT-B-32:openai"], "weights for model 'ViT-B-32:openai' are not in the local cache; rerun with --download"),
    (["run", "--model", "world-vit", "--source-model", "hf-hub:vlmbench/absent"], "weights for model 'hf-hub:vlmbench/absent' are not"),
    (["run", "--matrix", "matrices/nosuch.toml"], "nosuch.toml"),
    (["run", "--matrix", "matrices/world.toml", "--samples", "3"], "--samples given with --matrix"),
    (["plan", "--matrix", "matrices/world.toml", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
     "cannot reach the Ray cluster at 127.0.0.1:1"),
]

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from vlmbench.cli import app

    cases, output = json.loads(sys.argv[1]), sys.argv[2]
    report = []
    for args in cases:
        extra = ["--output", output] if args[:1] == ["run"] and "--help" not in args else []
        result = CliRunner().invoke(app, args + extra)
        report.append([args, result.exit_code, result.output, "torch" in sys.modules])
    result = CliRunner().invoke(app, ["list"])
    report.append([["list"], result.exit_code, result.output,
                   sorted(m for m in ("open_clip", "torchvision") if m in sys.modules)])
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def startup_report(tmp_path_factory) -> tuple[list, Path]:
    """Every TORCH_FREE case, then `vlmbench list`, invoked in one fresh interpreter, in order."""
    home = tmp_path_factory.mktemp("startup")
    output = home / "results"
    output.mkdir()
    (output / "earlier.parquet").write_bytes(b"precious")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(COLUMNS="250", HOME=str(home), HF_HUB_CACHE=str(home / "hf-empty"))  # no weights cached anywhere
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps([args for args, _ in TORCH_FREE]), str(output)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1]), output


@pytest.mark.parametrize(("index", "case"), list(enumerate(TORCH_FREE)), ids=[" ".join(a) or "''" for a, _ in TORCH_FREE])
def test_help_version_and_bad_options_answer_without_torch(startup_report, index, case):
    report, output = startup_report
    args, exit_code, text, torch_loaded = report[index]
    fragment = case[1]
    assert args == case[0]
    assert not torch_loaded, f"vlmbench {' '.join(args)} imported torch"
    if fragment:
        assert exit_code == 2, text
        assert text.strip().startswith("error:") and fragment in text and text.strip().count("\n") == 0, text
    else:
        assert exit_code == 0, text
    assert sorted(p.name for p in output.iterdir()) == ["earlier.parquet"]  # results untouched
    assert (output / "earlier.parquet").read_bytes() == b"precious"


def test_list_shows_randomness_and_bpda_columns_without_open_clip(startup_report):
    report, _ = startup_report
    args, exit_code, text, heavy = report[-1]
    assert args == ["list"] and exit_code == 0, text
    assert heavy == [], f"vlmbench list imported {heavy}"
    defenses = text[text.index("defenses"):text.index("attacks")]
    assert "random" in defenses and "BPDA" in defenses
    ttc = next(line for line in defenses.splitlines() if line.strip("│ ").startswith("ttc "))
    assert "yes" in ttc and "counterattack" in ttc.replace("\n", "")


def test_version_prints_the_installed_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"vlmbench {version('vlmbench')}"


@pytest.mark.parametrize("text", ["1e-3", "1E-3", ".5e-2", "4/255", "0.0156862745", "2", " 0.5/255 "])
def test_every_float_spelling_of_eps_is_accepted(text):
    validate_request_options(eps=(text,), norm="l2" if text == "2" else "linf")


@pytest.mark.parametrize("text", ["abc", "1e", "e-3", "1e-3x", "4//255", "4/255/2", "nan", "inf", "0x10", "1,5", "0", "-1/255", "4/0"])
def test_garbage_eps_is_refused_with_one_line(text):
    with pytest.raises(VlmbenchError) as info:
        validate_request_options(eps=(text,))
    assert "\n" not in str(info.value) and "ε" in str(info.value)


def test_explicitly_empty_list_options_are_errors_not_defaults():
    assert split_values(None, "--eps") == ()
    assert split_values(["1/255, 2/255", "4/255"], "--eps") == ("1/255", "2/255", "4/255")
    for given in ([""], [" "], [","], ["1/255", ""]):
        with pytest.raises(VlmbenchError, match="--eps .* is empty"):
            split_values(given, "--eps")


def test_names_of_plugin_sources_count_once_loaded(tmp_path):
    source = tmp_path / "my_defense.py"
    source.write_text(
        "from typing import ClassVar\nfrom vlmbench.defense import Defense\n\n"
        "class Jitter(Defense):\n    name: ClassVar[str] = 'jitter'\n    description: ClassVar[str] = 'test'\n"
    )
    with pytest.raises(VlmbenchError, match="unknown defense 'jitter'"):
        validate_request_options(defenses=("none+jitter",))
    plugins().load_source(str(source))
    validate_request_options(defenses=("none+jitter",), source_defense="jitter")
    with pytest.raises(VlmbenchError, match="did you mean 'jitter'"):
        validate_request_options(defenses=("jittre",))


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.ENOSPC, "no space left on the device: /data/out/cell.parquet; free space and rerun"),
        (errno.EDQUOT, "no space left on the device: /data/out/cell.parquet"),
        (errno.EACCES, "cannot write /data/out/cell.parquet: permission denied"),
        (errno.EROFS, "cannot write /data/out/cell.parquet: read-only"),
    ],
)
def test_full_or_unwritable_disk_is_one_line_and_exit_2(monkeypatch, code, fragment):
    from vlmbench import results

    def fail(*args, **kwargs):
        raise OSError(code, "disk trouble", "/data/out/cell.parquet")

    monkeypatch.setattr(results, "load_results", fail)
    result = CliRunner().invoke(app, ["results", "show", "/data/out"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error:") and fragment in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_pyarrow_style_disk_full_without_errno_is_recognised_and_other_os_errors_are_not(monkeypatch):
    from vlmbench import results

    errors = iter([OSError("[Errno 28] Error writing bytes to file"), FileNotFoundError(errno.ENOENT, "gone", "x")])

    def fail(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(results, "load_results", fail)
    full = CliRunner().invoke(app, ["results", "show", "/data/out"])
    assert full.exit_code == 2 and "no space left on the device" in full.output
    other = CliRunner().invoke(app, ["results", "show", "/data/out"])
    assert isinstance(other.exception, FileNotFoundError)  # a bug, not a user error: traceback kept


def test_cached_weights_pass_the_precheck_and_missing_ones_do_not(tmp_path, monkeypatch):
    """The Hugging Face cache layout open_clip reads for ViT-B-32:openai (its tag names a hub repo)."""
    import huggingface_hub.constants as hf_constants

    from vlmbench.preflight import check_cached_weights
    from vlmbench.weights import ModelLoadError

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        check_cached_weights(("ViT-B-32:openai",), download=False)
    check_cached_weights(("ViT-B-32:openai",), download=True)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision / "open_clip_model.safetensors").write_bytes(b"weights")
    check_cached_weights(("ViT-B-32:openai", "world-vit", "local-dir:/anywhere", "ViT-B-32:/some/file.pt"), download=False)


def test_pretrained_tag_without_cached_weights_fails_fast_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    def no_network(*args, **kwargs):
        raise AssertionError("vlmbench tried to open a network connection")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache (~/.cache/clip) is empty too
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    output = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", "ViT-B-32:openai", "--dataset", "world-shape",
                                      "--samples", "2", "--threads", "1", "--output", str(output)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: weights for model 'ViT-B-32:openai' are not in the local cache; rerun with --download to fetch them, "
        "or pass a checkpoint file as ARCH:/path/to/weights"
    )
    assert not output.exists()


def test_plan_notes_are_printed_before_and_after_the_results(tiny_model_plugin_file, tmp_path, monkeypatch):
    from vlmbench import runner

    real_plan = runner.plan

    def plan_with_a_note(request):
        the_plan = real_plan(request)
        the_plan.notes = ["world-shape: 3 images asked for, all 3 evaluated (a test note)"]
        return the_plan

    monkeypatch.setattr(runner, "plan", plan_with_a_note)
    result = CliRunner().invoke(app, ["run", "--plugin", str(tiny_model_plugin_file), "--model", "tiny-world",
                                      "--dataset", "world-shape", "--attack", "none", "--samples", "3",
                                      "--threads", "1", "--no-eps-sweep", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    notes = [i for i, line in enumerate(lines) if line == "note: world-shape: 3 images asked for, all 3 evaluated (a test note)"]
    summary = next(i for i, line in enumerate(lines) if " cells (" in line)
    assert len(notes) == 2 and notes[0] < summary < notes[1]


CONTRACTS = ["vlmbench.defense", "vlmbench.attack", "vlmbench.data", "vlmbench.models", "vlmbench.classifier"]


def test_contracts_never_import_the_registry():
    """Statically (not even lazily, inside a function) and at run time (a fresh interpreter)."""
    for module in CONTRACTS:
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {f"vlmbench.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module == "vlmbench" for alias in node.names}
        assert not imported & {"vlmbench.registry", "vlmbench.resolve"}, f"{module} imports the registry"
    code = ("import importlib, sys\n"
            f"for m in {CONTRACTS!r}:\n    importlib.import_module(m)\n"
            "print(sorted(m for m in ('vlmbench.registry', 'vlmbench.resolve') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_old_import_paths_keep_working():
    from vlmbench.attack import parse_attack_name
    from vlmbench.registry import import_object, unknown_name_message
    from vlmbench.resolve import resolve_model

    assert parse_attack_name("pgd-10", ["pgd"]) == ("pgd", 10)
    assert import_object("vlmbench.resolve:resolve_model") is resolve_model
    assert unknown_name_message("attack", "pgdd", ["pgd"]) == "unknown attack 'pgdd'; did you mean 'pgd'?"
