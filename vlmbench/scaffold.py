"""``vlmbench new defense|attack NAME``: a pip-installable plugin package to fill in.

The package is rendered from the jinja2 templates shipped in ``vlmbench/templates/scaffold/`` into
``DIR/vlmbench-NAME/``::

    vlmbench-NAME/
        pyproject.toml                  entry point NAME = "vlmbench_NAME.plugin:Class" in vlmbench.defenses/.attacks
        README.md                       the submission checklist
        .gitignore
        src/vlmbench_NAME/__init__.py
        src/vlmbench_NAME/plugin.py     docstring to fill in (paper, algorithm box, what the paper leaves
                                        unspecified), a typed Config, the plugin class with its hooks
        tests/test_conformance.py       vlmbench's contract checks on the plugin, through the CLI, on the world

Three kinds: a training-time defense (a :class:`~vlmbench.finetune.FineTuneDefense`, as generated
TeCoA's loss), a test-time defense (a :class:`~vlmbench.defense.Defense` whose ``wrap`` mixes a 3×3
blur into the image: deterministic and differentiable), and an attack (iterative FGSM). Each runs as
generated, so the package's tests pass before the first edit; the placeholder parts are marked
``REPLACE``. Torch-free: only jinja2 and the standard library are imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from vlmbench.errors import VlmbenchError

TEMPLATES = Path(__file__).parent / "templates" / "scaffold"
DEFENSE_KINDS = ("training", "test-time")
KINDS = ("defense", "attack")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")
MAX_NAME = 40
# Names the generated module imports: a plugin class must not shadow them.
RESERVED_CLASSES = frozenset({
    "Attack", "AttackError", "Defense", "DefenseContext", "FineTuneConfig", "FineTuneDefense", "Model", "Phase",
    "ReportedFigure", "Settings", "Step", "ThreatModel", "ZeroShotClassifier",
})
COMMON = (
    ("common/pyproject.toml.j2", "pyproject.toml"),
    ("common/README.md.j2", "README.md"),
    ("common/gitignore.j2", ".gitignore"),
    ("common/__init__.py.j2", "src/{module}/__init__.py"),
    ("common/test_conformance.py.j2", "tests/test_conformance.py"),
)
PLUGIN_TEMPLATE = {
    ("defense", "training"): "defense-training/plugin.py.j2",
    ("defense", "test-time"): "defense-test-time/plugin.py.j2",
    ("attack", None): "attack/plugin.py.j2",
}


class ScaffoldError(VlmbenchError):
    """A ``vlmbench new`` request that cannot be carried out (bad name, kind or output folder)."""


@dataclass(frozen=True)
class Plugin:
    """What the templates are rendered with.

    Attributes:
        kind: ``defense`` or ``attack``; defense_kind: ``training``, ``test-time`` or None (attacks).
        name: the registry name (``my-defense``); module: the Python package (``vlmbench_my_defense``);
        dist: the distribution and folder name (``vlmbench-my-defense``); class_name: the plugin class;
        group: the entry-point group; vlmbench_version: the version the package was generated with.
    """

    kind: str
    defense_kind: str | None
    name: str
    module: str
    dist: str
    class_name: str
    group: str
    vlmbench_version: str

    @property
    def config_name(self) -> str:
        return f"{self.class_name}Config"


def check_name(name: str, kind: str) -> None:
    """Refuse, in one line, a name that is not a plugin name or that an installed plugin already has."""
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        raise ScaffoldError(
            f"bad {kind} name {name!r}: use lowercase letters, digits, '_' and '-' (starting with a letter, "
            f"at most {MAX_NAME} characters), e.g. my_defense"
        )
    if kind == "attack" and re.search(r"-\d+$", name):
        raise ScaffoldError(f"bad attack name {name!r}: a name ending in -DIGITS reads as NAME-STEPS (pgd-10)")
    for entry in entry_points(group=f"vlmbench.{kind}s"):
        if entry.name == name:
            raise ScaffoldError(f"{kind} name {name!r} is taken by an installed plugin ({entry.value}); choose another")


def class_name(name: str, kind: str) -> str:
    """``my-noise`` → ``MyNoiseDefense`` (``Attack`` for attacks); never a name the module imports."""
    stem = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name))
    suffix = kind.capitalize()
    candidate = stem if stem.endswith(suffix) else stem + suffix
    return candidate + "Plugin" if candidate in RESERVED_CLASSES else candidate


def describe(kind: str, name: str, defense_kind: str | None = None) -> Plugin:
    """The rendering context of plugin ``name`` (validated)."""
    if kind not in KINDS:
        raise ScaffoldError(f"unknown plugin kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "defense" and defense_kind not in DEFENSE_KINDS:
        raise ScaffoldError(f"bad --kind {defense_kind!r} for a defense: choose from {', '.join(DEFENSE_KINDS)}")
    check_name(name, kind)
    from vlmbench import __version__

    floor = __version__ if re.fullmatch(r"\d+(\.\d+)*", __version__) else "0.1.0"
    module = "vlmbench_" + name.replace("-", "_")
    return Plugin(kind, defense_kind if kind == "defense" else None, name, module, f"vlmbench-{name}",
                  class_name(name, kind), f"vlmbench.{kind}s", floor)


def render(plugin: Plugin) -> dict[str, str]:
    """The package's files (relative path → text), rendered in memory."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    context = {"p": plugin}
    pairs = (*COMMON, (PLUGIN_TEMPLATE[(plugin.kind, plugin.defense_kind)], "src/{module}/plugin.py"))
    return {target.format(module=plugin.module): environment.get_template(source).render(context)
            for source, target in pairs}


def new_plugin(kind: str, name: str, out: Path, defense_kind: str | None = None) -> tuple[Path, list[str]]:
    """Write the package of plugin ``name`` into ``out/vlmbench-NAME/``.

    Args:
        kind: ``defense`` or ``attack``.
        name: the plugin's registry name (lowercase letters, digits, ``_``, ``-``).
        out: the folder in which ``vlmbench-NAME/`` is created (made if missing).
        defense_kind: ``training`` or ``test-time`` (defenses only).

    Returns:
        The package folder and the files written (relative paths, sorted).

    Raises:
        ScaffoldError: bad kind or name, or the package folder exists and is not empty (one line each).
    """
    plugin = describe(kind, name, defense_kind)
    folder = Path(out) / plugin.dist
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScaffoldError(f"{folder} already exists and is not empty; choose another --out or remove it")
    files = render(plugin)  # everything rendered before the first write
    for relative, text in sorted(files.items()):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder, sorted(files)
