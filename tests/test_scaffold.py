"""`vlmbench new defense|attack NAME`: the generated plugin packages, tested as template projects test
themselves — generate each kind, check its files and that its Python compiles, run the generated code
(the training-time defense and the attack in-process through `--plugin` on the tiny random model), and
for the test-time defense the whole loop: a fresh venv, `pip install -e` of the package, the package's
own tests in that venv, and `vlmbench list defenses` there."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmbench import scaffold
from vlmbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
# (kind, --kind, name): the three kinds, names exercising '-' and '_'
KINDS = [("defense", "training", "my-aft"), ("defense", "test-time", "tt_smooth"), ("attack", None, "my_fgsm")]


def new(kind: str, name: str, out: Path, defense_kind: str | None = None, *extra: str):
    args = ["new", kind, name, "--out", str(out), *(["--kind", defense_kind] if defense_kind else []), *extra]
    return CliRunner().invoke(app, args)


def generated(tmp_path: Path, kind: str, defense_kind: str | None, name: str) -> Path:
    result = new(kind, name, tmp_path, defense_kind)
    assert result.exit_code == 0, result.output
    return tmp_path / f"vlmbench-{name}"


def load_plugin(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("kind", "defense_kind", "name"), KINDS)
def test_generates_a_package_whose_python_compiles(tmp_path, kind, defense_kind, name):
    tomllib = pytest.importorskip("tomllib")
    folder = generated(tmp_path, kind, defense_kind, name)
    module = "vlmbench_" + name.replace("-", "_")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [".gitignore", "README.md", "pyproject.toml", f"src/{module}/__init__.py", f"src/{module}/plugin.py",
                     "tests/test_conformance.py"]
    for path in folder.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, f"unrendered template text in {path}"
            if path.suffix == ".py":
                compile(text, str(path), "exec")

    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    class_name = scaffold.class_name(name, kind)
    assert project["name"] == f"vlmbench-{name}"
    assert project["entry-points"][f"vlmbench.{kind}s"] == {name: f"{module}.plugin:{class_name}"}
    assert [d for d in project["dependencies"] if d.startswith("vlmbench")]
    assert project["optional-dependencies"]["test"] == ["pytest"]

    source = (folder / "src" / module / "plugin.py").read_text()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree)
    assert "TODO paper:" in docstring and "https://" in docstring
    assert "```text" in docstring and "What the paper leaves unspecified" in docstring
    assert "REPLACE" in source
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {class_name, f"{class_name}Config"} <= set(classes)
    assigned = {target.target.id for target in classes[class_name].body if isinstance(target, ast.AnnAssign)}
    assert {"name", "description", "version", "Config"} <= assigned
    if kind == "defense":
        assert {"paper", "code", "reported"} <= assigned
        assert "# " in source and "ReportedFigure(" in source  # the commented example
    if defense_kind == "test-time":
        assert {"stochastic", "non_differentiable"} <= assigned
        assert 'bpda(lambda x: torch.round(x * 255) / 255, name="quantise")' in source
        assert "forward_with_objective" in source
    if defense_kind == "training":
        assert "smoke_config" in source and "def presets" in source and "def phases" in source and "def loss" in source

    tests = (folder / "tests" / "test_conformance.py").read_text()
    assert f'"check", "{kind}", NAME' in tests and "TODO" not in tests
    readme = (folder / "README.md").read_text()
    for item in ("submission.json", "vlmbench results validate", "leaderboards/submissions/<your-entry>/", "pytest"):
        assert item in readme


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["defense", "My Defense", "--kind", "test-time"], "bad defense name 'My Defense'"),
        (["defense", "9lives", "--kind", "test-time"], "bad defense name '9lives'"),
        (["defense", "a--b", "--kind", "training"], "bad defense name 'a--b'"),
        (["defense", "tecoa", "--kind", "training"], "defense name 'tecoa' is taken by an installed plugin"),
        (["defense", "fine", "--kind", "both"], "bad --kind 'both' for a defense: choose from training, test-time"),
        (["attack", "pgd"], "attack name 'pgd' is taken"),
        (["attack", "fgsm-2"], "reads as NAME-STEPS"),
    ],
)
def test_refuses_bad_requests_in_one_line(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["new", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert fragment in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_refuses_a_non_empty_folder_and_fills_an_empty_one(tmp_path):
    (tmp_path / "vlmbench-fresh").mkdir()
    assert new("attack", "fresh", tmp_path).exit_code == 0  # an empty folder is filled
    again = new("attack", "fresh", tmp_path)
    assert again.exit_code == 2
    assert "already exists and is not empty" in again.output and len(again.output.strip().splitlines()) == 1


def test_new_is_torch_free(tmp_path):
    script = ("import sys; from typer.testing import CliRunner; from vlmbench.cli import app; "
              f"r = CliRunner().invoke(app, ['new', 'attack', 'light', '--out', {str(tmp_path)!r}]); "
              "print(r.exit_code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "False"], done.stdout + done.stderr


def test_every_template_ships_with_the_package():
    """pyproject's package-data glob for vlmbench covers every file under templates/scaffold/ (setuptools
    globs are not recursive: a deeper folder would need its own pattern)."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlmbench"]
    package = ROOT / "vlmbench"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    templates = {path for path in scaffold.TEMPLATES.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert templates and templates <= shipped, sorted(str(p) for p in templates - shipped)
    used = {source for source, _ in scaffold.COMMON} | set(scaffold.PLUGIN_TEMPLATE.values())
    assert {str(p.relative_to(scaffold.TEMPLATES)) for p in templates} == used


# ---------------------------------------------------------------------------------------------- the code runs


def run_and_validate(*args: str, output: Path) -> None:
    result = CliRunner().invoke(app, ["run", *args, "--dataset", "world-shape", "--samples", "2", "--batch-size", "2",
                                      "--threads", "1", "--adaptive-steps", "0", "--no-eps-sweep", "--output", str(output)])
    assert result.exit_code == 0, result.output
    check = CliRunner().invoke(app, ["results", "validate", str(output)])
    assert check.exit_code == 0, check.output


def test_generated_training_defense_trains_and_evaluates(tmp_path, tiny_model_plugin_file):
    folder = generated(tmp_path, "defense", "training", "my-aft")
    plugin = folder / "src" / "vlmbench_my_aft" / "plugin.py"
    cls = load_plugin(plugin, "vlmbench_scaffold_test_training").MyAftDefense
    smoke = {k: v for k, v in dataclasses.asdict(cls.smoke_config()).items() if v != getattr(cls.Config(), k)}
    assert smoke == {"steps": 2, "batch_size": 4, "attack_steps": 1, "warmup": 0}  # a budget of a few steps
    smoke = [f"{k}={v}" for k, v in smoke.items()]
    run_and_validate("--plugin", str(tiny_model_plugin_file), "--plugin", str(plugin), "--model", "tiny-world",
                     "--defense", "my-aft", "--attack", "pgd-2",
                     *[part for p in ["preset=world", *smoke] for part in ("--defense-param", p)], output=tmp_path / "out")
    from vlmbench import results

    rows = results.load_results(tmp_path / "out")
    assert set(rows["defense"]) == {"my-aft"}


def test_generated_attack_runs_within_its_budget(tmp_path, tiny_model_plugin_file, tiny_classifier):
    folder = generated(tmp_path, "attack", None, "my_fgsm")
    plugin = folder / "src" / "vlmbench_my_fgsm" / "plugin.py"
    run_and_validate("--plugin", str(tiny_model_plugin_file), "--plugin", str(plugin), "--model", "tiny-world",
                     "--defense", "none", "--attack", "my_fgsm-2", output=tmp_path / "out")
    from vlmbench import results
    from vlmbench.attack import check_perturbation
    from vlmbench.protocol import ThreatModel

    assert set(results.load_results(tmp_path / "out")["attack"]) == {"my_fgsm-2"}
    module = load_plugin(plugin, "vlmbench_scaffold_test_attack")  # the l2 branch and the margin loss, directly
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = tiny_classifier(x).argmax(dim=1)
    for norm, eps in (("l2", "0.5"), ("linf", "4/255")):
        threat = ThreatModel.build(norm, eps, 3)
        for loss in ("ce", "margin"):
            attack = module.MyFgsmAttack(threat, module.MyFgsmAttackConfig(loss=loss))
            x_adv = attack.perturb(tiny_classifier, x, y, torch.Generator().manual_seed(0))
            check_perturbation(x, x_adv, threat, "my_fgsm")
            assert not torch.equal(x_adv, x)


def test_generated_test_time_defense_is_a_valid_identity_like_defense(tmp_path, tiny_classifier):
    from vlmbench.adaptive import check_declared_steps
    from vlmbench.config import ConfigError, build_config
    from vlmbench.defense import DefenseContext

    folder = generated(tmp_path, "defense", "test-time", "tt_smooth")
    module = load_plugin(folder / "src" / "vlmbench_tt_smooth" / "plugin.py", "vlmbench_scaffold_test_defense")
    cls = module.TtSmoothDefense
    assert cls.kind() == "test-time" and not cls.stochastic and cls.non_differentiable == ()
    context = DefenseContext(tmp_path / "cache", torch.device("cpu"), 0)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    defended = cls().wrap(tiny_classifier, context)
    assert not hasattr(defended, "forward_with_objective")  # off by default: no defense_loss recorded
    assert check_declared_steps([cls()], defended, x) == ()
    assert torch.equal(defended(x), defended(x))  # deterministic
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(defended(x_grad).sum(), x_grad)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    identity = cls(module.TtSmoothDefenseConfig(smoothing=0.0)).wrap(tiny_classifier, context)
    assert torch.allclose(identity(x), tiny_classifier(x))

    aware = cls(build_config(cls.Config, ["objective_weight=2"], "defense 'tt_smooth'")).wrap(tiny_classifier, context)
    logits, extra = aware.forward_with_objective(x)
    assert logits.shape == (3, 5) and extra.shape == (3,) and (extra <= 0).all()
    with pytest.raises(ConfigError, match="smoothing must be in"):
        build_config(cls.Config, ["smoothing=2"], "defense 'tt_smooth'")


# ---------------------------------------------------------------------------------------------- the whole loop


def pip_command(python: Path) -> list[str] | None:
    """pip for the new venv, offline: this environment's own pip (visible in the venv through its .pth),
    else the pip wheel bundled with ensurepip, run as a zip (pip supports running from its wheel)."""
    if importlib.util.find_spec("pip") is not None:
        return [str(python), "-m", "pip"]
    import ensurepip

    wheels = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    return [str(python), str(wheels[-1] / "pip")] if wheels else None


def make_venv(folder: Path) -> Path:
    """A venv whose packages are this environment's (torch, vlmbench, pytest, setuptools...), offline.

    `python -m venv --system-site-packages` is not enough when this interpreter is itself a venv (uv's
    `.venv`): "system" then means the base interpreter's site-packages, without torch or vlmbench, and
    ensurepip's setuptools (65 on Python 3.11) cannot build an editable wheel without `wheel`. So the venv
    is made without pip and a `.pth` file adds this environment's site-packages with `site.addsitedir`
    (which also runs their `.pth` files: vlmbench's own editable install)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    import site

    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = [f"import site; site.addsitedir({p!r})" for p in parents]
    (Path(purelib) / "_vlmbench_parent_environment.pth").write_text("\n".join(lines) + "\n")
    return python


def test_generated_test_time_package_installs_and_passes_its_own_tests(tmp_path):
    """About a minute on one CPU thread (each subprocess is bounded; together under two minutes)."""
    folder = generated(tmp_path, "defense", "test-time", "tt_smooth")
    python = make_venv(tmp_path / "venv")
    pip = pip_command(python)
    if pip is None:
        pytest.skip("no pip available offline (neither in this environment nor bundled with ensurepip)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(folder)],
                               capture_output=True, text=True, env=env, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder,
                           capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    listing = subprocess.run([str(python), "-c", "import sys; from vlmbench.cli import app; sys.argv[0] = 'vlmbench'; app()",
                              "list", "defenses"], capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    row = next((line for line in listing.stdout.splitlines() if " tt_smooth " in line), None)
    assert row is not None and "test-time" in row and "broken" not in row, listing.stdout
    where = subprocess.run([str(python), "-c", "import vlmbench_tt_smooth; print(vlmbench_tt_smooth.__file__)"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert where.stdout.strip() == str(folder / "src" / "vlmbench_tt_smooth" / "__init__.py")  # editable
