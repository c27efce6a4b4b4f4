"""Matrix files (`vlmbench run --matrix FILE`, vlmbench/matrix.py, docs/matrix.md): the example files
load, every CLI option has a key, errors name the file's line, include/exclude compile to exactly the
brute-force set of cells as disjoint products, and matrices/world.toml is the world entry's commands."""

from __future__ import annotations

import fnmatch
import itertools
import re
import subprocess
import sys
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vlmbench.cli import app
from vlmbench.matrix import AXES, KEYS, Cell, MatrixError, cells, load_matrix, request_cells
from vlmbench.protocol import parse_eps
from vlmbench.registry import plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "matrices").glob("*.toml"))
CLI_ONLY = {"matrix"}  # run options that make no sense inside a matrix file


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def settings(request) -> object:
    """A request without its axes: two cells are the same run when their coordinates and this agree."""
    return replace(request, models=(), defenses=(), attacks=(), datasets=(), eps=(), norm="", track=None)


def keyed_cells(requests) -> list[tuple[Cell, object]]:
    return [(cell, settings(request)) for request in requests for cell in request_cells(request)]


def run_command():
    return typer.main.get_command(app).commands["run"]


def cli_keys() -> dict[str, object]:
    """`vlmbench run`'s options as matrix keys (the long option without --) → the click parameter."""
    out = {}
    for param in run_command().params:
        long = [opt for opt in param.opts if opt.startswith("--")]
        assert long, param
        out[long[0][2:]] = param
    return out


# --- the example files --------------------------------------------------------------------------


def test_there_are_the_example_files():
    assert {p.name for p in EXAMPLES} >= {"world.toml", "tecoa16.toml", "fare13.toml", "ttc16.toml", "full-board.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads_and_says_what_it_is(path):
    text = path.read_text()
    assert text.startswith("#") and "Source" in text.split("\n\n")[0]  # a header comment naming its source
    matrix = load_matrix(path, check_weights=False)  # the OpenAI weights are not cached in the test environment
    assert matrix.requests and matrix.path == path
    found = keyed_cells(matrix.requests)
    assert len(found) == len(set(found)) > 0  # disjoint
    stem = path.stem
    if stem in ("tecoa16", "ttc16", "fare13"):
        assert {r.protocol for r in matrix.requests} == {stem}
        standard = __import__("json").loads((ROOT / "leaderboards" / "standards.json").read_text())[stem]
        attacks = {cell.attack for cell in cells(matrix)}
        assert set(standard["attacks"]) <= attacks  # the board's standard attacks are all run
        assert {cell.dataset for cell in cells(matrix)} == set(standard["datasets"])


def test_full_board_lists_every_registered_defense_on_both_tracks_and_radii():
    matrix = load_matrix(ROOT / "matrices" / "full-board.toml", check_weights=False)
    found = cells(matrix)
    assert {c.defense for c in found} == set(plugins().defenses.names())
    assert {c.eps for c in found} == {"1/255", "4/255"} and {c.track for c in found} == {"oblivious", "adaptive"}
    for defense in ("ttc", "scc"):  # aa-tecoa has no EOT: aa-rand on the adaptive track of random defenses
        assert not any(c.defense == defense and c.attack == "aa-tecoa" and c.track == "adaptive" for c in found)
        assert any(c.defense == defense and c.attack == "aa-rand" and c.track == "adaptive" for c in found)
        assert any(c.defense == defense and c.attack == "aa-tecoa" and c.track == "oblivious" for c in found)
    assert any(c.defense == "tecoa" and c.attack == "aa-tecoa" and c.track == "adaptive" for c in found)


def test_world_toml_asks_for_exactly_the_cells_of_the_world_entrys_commands(monkeypatch):
    """The RunRequests the CLI builds from `leaderboards/world.py`'s commands (captured where the CLI
    hands them to the planner) and world.toml's compiled requests: the same cells with the same options."""
    import torch

    import vlmbench.runner
    from vlmbench.leaderboards.world import commands

    class Captured(Exception):
        pass

    captured, threads = [], []

    def fake_plan(request):
        captured.append(request)
        raise Captured

    planner = vlmbench.runner.plan
    for name, module in list(sys.modules.items()):
        if name.startswith("vlmbench") and getattr(module, "plan", None) is planner:
            monkeypatch.setattr(module, "plan", fake_plan)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for args in commands():
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, Captured), f"{args}: {result.output or result.exception!r}"
    assert len(captured) == len(commands())
    expected = keyed_cells(captured)
    matrix = load_matrix(ROOT / "matrices" / "world.toml")
    found = keyed_cells(matrix.requests)
    assert len(found) == len(set(found)) and len(expected) == len(set(expected))
    assert set(found) == set(expected)
    assert len(found) == 7 * 2 * 6 * 2 * 2 + 3 * 2 * 6 * 1 * 2  # defenses × attacks × datasets × ε × tracks
    assert set(threads) == {matrix.run_options["threads"]} == {1}


def test_the_compiled_requests_plan_as_the_cli_would(tmp_path):
    """ttc16.toml's exclude/include on the world: each compiled request passes the planner (aa-tecoa
    is refused on the adaptive track of a random defense, so the exclude is needed)."""
    from vlmbench.runner import RunError, plan

    text = (ROOT / "matrices" / "ttc16.toml").read_text()
    text = text.replace('protocol = "ttc16"', 'protocol = "world"').replace("ViT-B-32:openai", "world-vit")
    matrix = load_matrix(write(tmp_path, text))
    tracks = []
    for request in matrix.requests:
        tracks.append([d.tracks for d in plan(replace(request, output=tmp_path / "out")).defenses])
    assert tracks == [[("oblivious",)], [("oblivious", "adaptive")] * 2, [("oblivious",)] * 2, [("adaptive",)] * 2]
    without = re.sub(r"\[\[exclude\]\].*?\n\n", "", text, flags=re.S)
    with pytest.raises(RunError, match="cannot average over the randomness"):
        for request in load_matrix(write(tmp_path, without, "w.toml")).requests:
            plan(replace(request, output=tmp_path / "out"))


# --- keys -----------------------------------------------------------------------------------------


def test_every_run_option_has_a_matrix_key_and_every_key_an_option():
    options = cli_keys()
    missing = set(options) - set(KEYS) - CLI_ONLY
    assert not missing, f"`vlmbench run` options without a matrix key (add them to vlmbench.matrix.KEYS): {missing}"
    assert set(KEYS) - set(options) == set()  # and every key is an option


def test_every_request_field_has_exactly_one_key_and_the_defaults_agree_with_the_cli():
    from vlmbench.request import RunRequest

    request_fields = [f.name for f in fields(RunRequest)]
    keyed = [key.field for key in KEYS.values() if key.field is not None]
    assert sorted(keyed) == sorted(request_fields)
    defaults, options = RunRequest(), cli_keys()
    for name, key in KEYS.items():
        param = options.get(name)
        if key.field is None or param is None or param.default is None or param.multiple:
            continue
        assert getattr(defaults, key.field) == param.default, name  # an absent key means the CLI's default


def test_docs_list_every_key_with_its_field():
    text = (ROOT / "docs" / "matrix.md").read_text()
    documented = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| `?([a-z_ ]+)`? \|", text, flags=re.M)
    assert dict(documented) == {name: key.field or "run option" for name, key in KEYS.items()}
    assert len(documented) == len(KEYS)


def test_the_docs_example_compiles_to_the_products_the_docs_show(tmp_path):
    text = (ROOT / "docs" / "matrix.md").read_text()
    example = re.findall(r"```toml\n(.*?)```", text, flags=re.S)[0]
    matrix = load_matrix(write(tmp_path, example), check_weights=False)
    assert [(r.defenses, r.attacks, r.eps, r.track, r.defense_params) for r in matrix.requests] == [
        (("none", "tecoa"), ("pgd-10", "cw-10", "aa-tecoa"), ("1/255", "4/255"), None, ()),
        (("ttc",), ("pgd-10", "cw-10"), ("1/255", "4/255"), None, ()),
        (("ttc",), ("aa-tecoa",), ("1/255", "4/255"), "oblivious", ()),
        (("hpt_gpd",), ("pgd-10", "cw-10", "aa-tecoa"), ("1/255",), None, ("gpd=false",)),
    ]
    assert all(len(r.datasets) == 16 for r in matrix.requests)


def test_importing_the_module_does_not_import_torch():
    code = "import sys, vlmbench.matrix; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert completed.stdout.strip() == "False", completed.stderr


def test_values_types_and_run_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VLMBENCH_DATA_ROOT", raising=False)
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", """
model = "world-vit"
attack = "pgd-10,cw-10"          # commas split, as on the command line
eps = [0.5, "1/255"]
norm = "l2"
step-size = 0.1
samples = 4
selection = "random"
random-start = false
output = "out/here"
data-root = "~/data"
defense-param = "gpd=false"
defense = "hpt_gpd"
dataset = "world-shape"
threads = 2
executor = "ray"
shard = "2/4"
ray-address = "auto"
""")
    matrix = load_matrix(path)
    (request,) = matrix.requests
    assert request.attacks == ("pgd-10", "cw-10") and request.eps == ("0.5", "1/255") and request.norm == "l2"
    assert request.step_size == "0.1" and request.n_samples == 4 and request.selection == "random"
    assert request.random_start is False and request.defense_params == ("gpd=false",)
    assert request.output == Path("out/here")  # relative to the working directory, not to the file
    assert request.data_root == Path("~/data").expanduser()
    assert request.track is None and request.datasets == ("world-shape",)
    assert matrix.run_options == {"threads": 2, "executor": "ray", "shard": "2/4", "ray_address": "auto"}
    monkeypatch.setenv("VLMBENCH_DATA_ROOT", "/datasets")
    assert load_matrix(write(tmp_path, 'dataset = "world-size"')).requests[0].data_root == Path("/datasets")


def test_plugin_sources_load_before_names_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jitter.py").write_text(
        "from typing import ClassVar\nfrom vlmbench.defense import Defense\n\n"
        "class Jitter(Defense):\n    name: ClassVar[str] = 'jitter'\n    description: ClassVar[str] = 'test'\n"
    )
    matrix = load_matrix(write(tmp_path, 'plugin = "jitter.py"\ndefense = ["none", "jitter"]\n'))
    assert matrix.run_options["plugin"] == ("jitter.py",)
    assert {c.defense for c in cells(matrix)} == {"none", "jitter"}


# --- errors ------------------------------------------------------------------------------------------

ERRORS = [
    ('model = "world-vit"\natack = "pgd-10"\n', 2, "unknown key 'atack'; did you mean 'attack'"),
    ('batch_size = 3\n', 1, "unknown key 'batch_size'; did you mean 'batch-size'"),
    ('\n\nsamples = "ten"\n', 3, "samples takes an integer, not the string 'ten'"),
    ('seed = true\n', 1, "seed takes an integer, not the boolean true"),
    ('cascade = "yes"\n', 1, "cascade takes true or false, not the string 'yes'"),
    ('eps = ["1/255", "abc"]\n', 1, "bad ε 'abc'"),
    ('eps = []\n', 1, "eps is an empty list"),
    ('eps = "8"\n', 1, "did you mean 8/255?"),
    ('norm = "l2"\neps = "2"\n\n[[include]]\nnorm = "linf"\n', 5, "bad ε 2 for linf"),  # the include's own key
    ('selection = "balance"\n', 1, "bad selection 'balance'"),
    ('batch-size = 0\n', 1, "bad batch size 0"),
    ('track = ["oblivious", "sideways"]\n', 1, "bad track 'sideways'"),
    ('attack = [\n  "pgd-10",\n  "pgdd-10",\n]\n', 1, "unknown attack 'pgdd'; did you mean 'pgd'"),
    ('defense = "none"\n\n[[include]]\ndefense = "tecao"\n', 4, "unknown defense 'tecao'; did you mean 'tecoa'"),
    ('[[include]]\ndefense = "tecoa"\n\n[[include]]\neps = "4/255"\ndataset = "world-shap"\n', 6, "unknown dataset 'world-shap'; did you mean 'world-shape'"),
    ('include = [{ defense = "tecao" }]\n', 1, "unknown defense 'tecao'"),
    ('[[include]]\nthreads = 2\n', 2, "threads applies to the whole run"),
    ('[[include]]\n', 1, "empty [[include]]"),
    ('include = ["tecoa"]\n', 1, "include must be tables"),
    ('[include]\ndefense = "tecoa"\n', 1, "write [[include]] (double brackets)"),
    ('[[exclude]]\nsamples = 3\n', 2, "exclude key 'samples' is not an axis"),
    ('[[exclude]]\ndatset = "world-size"\n', 2, "unknown exclude key 'datset'; did you mean 'dataset'"),
    ('[[exclude]]\ndataset = "nosuch-*"\n', 2, "no dataset matches 'nosuch-*'"),
    ('defense = "none"\n\n[[exclude]]\ndefense = "ttc"\n', 3, "matches no cell"),
    ('dataset = "world-size"\n# everything\n[[exclude]]\ndataset = "world-*"\n', 3, "removes every remaining cell"),
    ('model = "world-vit"\neps = [1/255]\n', 2, "invalid TOML"),
    ('protocol = "tecoa61"\n', 1, "unknown protocol preset 'tecoa61'; did you mean 'tecoa16'"),
    ('protocol = "tecoa16"\ndataset = "world-*"\n', 2, "dataset selects none of the datasets of protocol 'tecoa16': cifar10, cifar100,"),
    ('shard = "5/4"\n', 1, "'5/4': write I/N with 1 ≤ I ≤ N"),
    ('executor = "rey"\n', 1, "unknown executor 'rey'; did you mean 'ray'?"),
    ('ray-address = "auto"\n', 1, 'ray-address needs executor = "ray"'),
    ('threads = 0\n', 1, "bad number of threads 0"),
    ('plugin = "no_such_plugin_module_xyz"\n', 1, "no_such_plugin_module_xyz"),
    ('model = "ViT-B-32:openai"\n', 1, "are not in the local cache"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_are_one_line_naming_the_file_and_line(tmp_path, monkeypatch, text, line, fragment):
    import vlmbench.preflight

    monkeypatch.setattr(vlmbench.preflight, "weights_are_local", lambda *args: False)  # no weights cached anywhere
    path = write(tmp_path, text, "x.toml")
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message and "\n" not in message, message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(MatrixError, match=r"nope\.toml: no such matrix file$"):
        load_matrix(tmp_path / "nope.toml")


# --- compilation -------------------------------------------------------------------------------------

BRUTE = """
model = ["world-vit", "world-rn"]
defense = ["none", "tecoa", "ttc"]
attack = ["pgd-10", "cw-10", "aa-tecoa"]
dataset = "world-*"
eps = ["1/255", "2/255", "4/255"]
samples = 4

[[include]]  # per-entry parameters
defense = "hpt_gpd"
defense-param = ["gpd=false"]
eps = "1/255"

[[include]]
norm = "l2"
eps = ["0.5", "0.25"]
attack = "pgd-10"

[[include]]  # cells of the top-level entry again, with the same options: they run once
defense = "tecoa"
eps = "0.0156862745"

[[include]]  # the same cells with other options: another run
defense = "tecoa"
samples = 8
track = ["oblivious", "adaptive"]

[[exclude]]
defense = "ttc"
attack = "aa-*"
track = "adaptive"

[[exclude]]
dataset = "world-c*"
model = "world-rn"

[[exclude]]
eps = "4/255"
attack = "cw"
defense = ["none", "tecoa"]

[[exclude]]
norm = "l2"
dataset = "world-size"
"""


def brute_force(text: str) -> set[tuple[Cell, tuple]]:
    """The matrix's cells by enumeration: every entry's product, minus every cell an exclude matches."""
    data = tomllib.loads(text)
    listed = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    names = plugins().datasets.names()
    entries = [{k: v for k, v in data.items() if k not in ("include", "exclude")}]
    entries += [{**entries[0], **include} for include in data.get("include", [])]
    found = set()
    for entry in entries:
        norm = entry.get("norm", "linf")
        datasets = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in listed(entry.get("dataset", "world-*")))]
        tracks = {t for track in listed(entry.get("track", "both")) for t in (("oblivious", "adaptive") if track == "both" else (track,))}
        for model, defense, attack, dataset, eps, track in itertools.product(
                listed(entry["model"]), listed(entry["defense"]), listed(entry["attack"]), datasets,
                listed(entry["eps"]), sorted(tracks)):
            cell = Cell(model, defense, attack, dataset, parse_eps(eps, norm)[1], norm, track)
            if not any(all(_matches(axis, value, cell) for axis, value in exclude.items()) for exclude in data.get("exclude", [])):
                found.add((cell, (entry.get("samples"), tuple(listed(entry.get("defense-param", []))))))
    return found


def _matches(axis: str, patterns, cell: Cell) -> bool:
    value = getattr(cell, axis)
    for pattern in (patterns if isinstance(patterns, list) else [patterns]):
        if axis == "eps" and parse_eps(pattern, cell.norm)[1] == value:
            return True
        if axis == "track" and (pattern == value or pattern == "both"):
            return True
        if axis == "attack" and value.rsplit("-", 1)[0] == pattern:
            return True
        if fnmatch.fnmatchcase(value, pattern):
            return True
    return False


def test_include_and_exclude_compile_to_exactly_the_brute_force_cells_as_disjoint_products(tmp_path):
    matrix = load_matrix(write(tmp_path, BRUTE))
    found = [(cell, (request.n_samples, request.defense_params))
             for request in matrix.requests for cell in request_cells(request)]
    assert len(found) == len(set(found)), "a cell occurs twice with the same options"
    expected = brute_force(BRUTE)
    assert set(found) == expected
    assert len(expected) > 300  # the test means something: 8 entries' worth of cells
    # the compiled requests are the entries' pieces in file order, every one a product
    assert [r.defenses for r in matrix.requests][:1] != [("hpt_gpd",)]
    assert matrix.requests[-1].n_samples == 8 and matrix.requests[-1].track == "both"
    for request in matrix.requests:
        assert set(request.datasets) <= set(plugins().datasets.names())  # globs expanded
        assert all(settings(request) == settings(r) for r in matrix.requests
                   if (r.n_samples, r.defense_params) == (request.n_samples, request.defense_params))


def test_an_include_repeating_cells_with_the_same_options_adds_only_the_new_ones(tmp_path):
    matrix = load_matrix(write(tmp_path, 'defense = ["none", "tecoa"]\neps = "1/255"\n\n'
                                         '[[include]]\ndefense = "tecoa"\neps = ["0.00392156862745098", "4/255"]\n'))
    assert [(r.defenses, r.eps) for r in matrix.requests] == [(("none", "tecoa"), ("1/255",)), (("tecoa",), ("4/255",))]
    matrix = load_matrix(write(tmp_path, 'defense = "hpt_gpd"\n\n[[include]]\ndefense-param = "gpd=false"\n'))
    assert [r.defense_params for r in matrix.requests] == [(), ("gpd=false",)]  # other options: another run


def test_a_glob_dataset_exclusion_is_expanded_against_the_registered_datasets(tmp_path):
    matrix = load_matrix(write(tmp_path, 'defense = ["none", "tecoa"]\n\n[[exclude]]\ndefense = "tecoa"\ndataset = "world-c*"\n'))
    world = [n for n in plugins().datasets.names() if n.startswith("world-")]
    assert [(r.defenses, r.datasets) for r in matrix.requests] == [
        (("none",), tuple(world)),
        (("tecoa",), tuple(n for n in world if not n.startswith("world-c"))),
    ]
    by_defense = {d: {c.dataset for c in cells(matrix) if c.defense == d} for d in ("none", "tecoa")}
    assert by_defense["none"] == set(world) and by_defense["tecoa"] == {"world-shape", "world-size", "world-texture"}


def test_tracks_compile_to_one_request_and_a_protocol_filters_the_datasets(tmp_path):
    matrix = load_matrix(write(tmp_path, 'protocol = "world"\ndataset = ["world-s*", "world-colour"]\n'
                                         'track = ["oblivious", "adaptive"]\ndefense = "ttc"\n'))
    (request,) = matrix.requests
    assert request.track == "both"  # exactly equivalent to the two (RunRequest's docs)
    assert request.datasets == ("world-shape", "world-colour", "world-size")  # the preset's order
    assert {c.track for c in cells(matrix)} == {"oblivious", "adaptive"}
    assert set(AXES) == set(Cell._fields)
