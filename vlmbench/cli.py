"""``vlmbench`` command line: run, list, results, world.

Every user-facing failure is a :class:`~vlmbench.errors.VlmbenchError` (or a full or read-only
disk); the CLI prints it as one line on stderr and exits with status 2, without a traceback and
without touching existing results. Options are checked by :mod:`vlmbench.preflight` before torch is
imported, so that ``--help``, ``--version`` and a mistyped option answer in about a second.
"""

from __future__ import annotations

import errno
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vlmbench.errors import VlmbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="Adversarial-robustness benchmark for zero-shot CLIP models.")
results_app = typer.Typer(no_args_is_help=True, help="Inspect results files.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded synthetic world and its tiny CLIP models.")
leaderboard_app = typer.Typer(no_args_is_help=True, help="Build the static leaderboard site from results, and serve it locally.")
new_app = typer.Typer(no_args_is_help=True, help="Create a plugin package to fill in: a defense or an attack.")
check_app = typer.Typer(no_args_is_help=True, help="Check a defense or an attack: its contract, and whether it is evaluated soundly.")
app.add_typer(results_app, name="results")
app.add_typer(world_app, name="world")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(new_app, name="new")
app.add_typer(check_app, name="check")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        from vlmbench import __version__

        console.print(f"vlmbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Adversarial-robustness benchmark for zero-shot CLIP models."""


def user_errors(func: F) -> F:
    """Turn vlmbench's own errors, and a full or unwritable disk, into ``error: <one line>`` and
    exit status 2. Other exceptions keep their traceback (they are bugs)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VlmbenchError as exc:
            _fail(str(exc))
        except OSError as exc:
            message = disk_error_message(exc)
            if message is None:
                raise
            _fail(message)

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2) from None


def disk_error_message(exc: OSError) -> str | None:
    """The one-line message for a full disk or an unwritable file, else None (not a user error).
    Reads ``exc.errno``, or the ``[Errno N]`` of the text (pyarrow's errors carry only that)."""
    code = exc.errno
    if code is None and (match := re.search(r"\[Errno (\d+)\]", str(exc))):
        code = int(match[1])
    filename = exc.filename if exc.filename is not None else "a file"
    if code in (errno.ENOSPC, errno.EDQUOT):
        where = f": {exc.filename}" if exc.filename is not None else ""
        return f"no space left on the device{where}; free space and rerun — finished cells are kept"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {filename}: permission denied; fix the permissions or write elsewhere (--output, VLMBENCH_CACHE)"
    if code == errno.EROFS:
        return f"cannot write {filename}: read-only file system; write elsewhere (--output, VLMBENCH_CACHE)"
    return None


def _load_plugin_sources(sources: list[str] | None) -> None:
    from vlmbench.registry import plugins

    for source in sources or []:
        plugins().load_source(source)


PluginOption = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="Module name or .py file defining extra plugins (repeatable)."),
]


@app.command()
@user_errors
def run(
    model: Annotated[list[str] | None, typer.Option(help="Model: registered name, ARCH:TAG, ARCH:/ckpt, hf-hub:ID, local-dir:PATH.")] = None,
    defense: Annotated[list[str] | None, typer.Option(help="Defense name, or a composition a+b.")] = None,
    attack: Annotated[list[str] | None, typer.Option(help="Attack NAME or NAME-STEPS (pgd-10, cw-100, none).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="Dataset names or glob patterns (default: world-*, or all of --protocol's).")] = None,
    protocol: Annotated[str | None, typer.Option(help="Protocol preset: tecoa16, ttc16, fare13, coop, all22, world (fixes datasets, splits, samples, templates, resolution).")] = None,
    eps: Annotated[list[str] | None, typer.Option(help="Radius: 1/255 or a float (default: 1/255).")] = None,
    norm: Annotated[str, typer.Option(help="Threat model norm: linf or l2.")] = "linf",
    step_size: Annotated[str | None, typer.Option(help="Attack step size (default: see docs/protocol.md).")] = None,
    restarts: Annotated[int, typer.Option(help="Random restarts per attack.")] = 1,
    random_start: Annotated[bool, typer.Option(help="Start attacks at a random point of the ball.")] = True,
    samples: Annotated[int | None, typer.Option(help="Images per dataset (default: the whole split).")] = None,
    selection: Annotated[str, typer.Option(help="first, random (seeded) or balanced (seeded, class-balanced) sample selection.")] = "first",
    split: Annotated[str | None, typer.Option(help="Dataset split (default: the dataset's evaluation split).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch, part of the protocol (default: per cell, an existing cell's size in the output, else 128 on the CPU, else the largest that fits in free GPU memory).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    data_root: Annotated[Path | None, typer.Option(envvar="VLMBENCH_DATA_ROOT", help="Root folder of real datasets.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download missing model weights (pretrained tags, hf-hub:) and datasets where their own loader can; never done otherwise.")] = False,
    output: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    attack_param: Annotated[list[str] | None, typer.Option(help="Attack parameter key=value (repeatable).")] = None,
    defense_param: Annotated[list[str] | None, typer.Option(help="Defense parameter key=value (repeatable).")] = None,
    track: Annotated[str | None, typer.Option(help="oblivious, adaptive or both (default: both for test-time defenses).")] = None,
    eot: Annotated[int | None, typer.Option(help="EOT draws per gradient on the adaptive track (default: 10 if the defense is random).")] = None,
    eval_draws: Annotated[int | None, typer.Option(help="Forward draws scoring a random defense: rows keep their majority vote and expectation, summaries the expectation (default: 10).")] = None,
    adaptive_steps: Annotated[int | None, typer.Option(help="Minimum steps of PGD/CW on the adaptive track (default: 40; 0: the attack's own).")] = None,
    source_model: Annotated[str | None, typer.Option(help="Craft the attacks on this model instead (transfer track).")] = None,
    source_defense: Annotated[str | None, typer.Option(help="Defend the transfer source with this defense.")] = None,
    target: Annotated[str | None, typer.Option(help="Targeted attack: random, least-likely, a class index or name.")] = None,
    superclasses: Annotated[str | None, typer.Option(help="Attack the superclass label space: a map the dataset offers (world-combo: shape, colour), a hierarchy level HIERARCHY[:TREE]:LEVEL (wordnet:2, world:colour:1, fgvc-aircraft:2; docs/hierarchies.md) or a JSON file.")] = None,
    cascade: Annotated[bool, typer.Option(help="Run each later attack only on the images every earlier one left robust (recorded).")] = False,
    eps_sweep: Annotated[bool, typer.Option(help="Quick ε sweep per cell (2ε, 4ε on 16 images) for the eps-not-monotone flag.")] = True,
    precision: Annotated[str, typer.Option(help="auto, fp32, tf32 (CUDA) or bf16: anything but fp32 runs only where `vlmbench parity` measured it to give fp32's robust accuracy; auto takes the fastest such, else fp32 (docs/protocol.md).")] = "auto",
    save_adversarials: Annotated[bool, typer.Option("--save-adversarials", help="Store each attacked cell's adversarial images beside its Parquet file (CELL.adv.npz), for `results verify`.")] = False,
    shard: Annotated[str | None, typer.Option(help="Run only part I of N of the cells (I/N): deterministic and balanced on estimated cost; the N parts are disjoint and together the whole run (SLURM arrays, one process per GPU).")] = None,
    matrix: Annotated[Path | None, typer.Option(help="A matrix file (TOML, docs/matrix.md): the whole request in one file; besides it only --shard, --executor, --ray-address, --threads, --device, --data-root, --output and --plugin may be given (they override the file).")] = None,
    executor: Annotated[str, typer.Option(help="Where cells run: local (this process) or ray (one worker per GPU of a Ray cluster; vlmbench[ray]).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (HOST:PORT, ray://HOST:PORT or auto; default: start a local instance). --executor ray only.")] = None,
    plugin: PluginOption = None,
    ctx: typer.Context = None,  # type: ignore[assignment]
) -> None:
    """Evaluate models × defenses × attacks × datasets × ε and write per-sample Parquet."""
    _run_or_plan(dry=False, **locals())


def plan(**options: Any) -> None:
    """Show what `vlmbench run` with the same options would do, running nothing: every cell with its
    status in the output folder (complete, partial, pending, needs training), the estimated model
    calls, and a time estimate from the throughput measured in that folder on this device."""
    _run_or_plan(dry=True, **options)


plan.__signature__ = __import__("inspect").signature(run)  # type: ignore[attr-defined]
plan.__annotations__ = dict(run.__annotations__)
app.command("plan")(user_errors(plan))


# the options that may stand beside --matrix (they say where and how, not what, to run)
MATRIX_COMPANIONS = ("shard", "executor", "ray_address", "threads", "device", "data_root", "output", "plugin")


def _run_or_plan(dry: bool, ctx: typer.Context, **options: Any) -> None:
    """``vlmbench run`` (``dry``: ``vlmbench plan``): the request from the options or a matrix file,
    its plans, this shard's jobs, then the local or Ray executor."""
    from vlmbench.preflight import parse_shard

    _load_plugin_sources(options["plugin"])  # before the names are checked: its plugins count
    given = {name for name in options if ctx is not None and ctx.get_parameter_source(name) is not None
             and ctx.get_parameter_source(name).name in ("COMMANDLINE", "ENVIRONMENT")}
    if options["matrix"] is not None:
        requests, settings = _matrix_requests(options, given)
    else:
        requests, settings = [_request_from_options(options)], {}
    for name in ("shard", "executor", "ray_address", "threads"):  # the command line overrides the file
        if name in given or name not in settings:
            settings[name] = options[name]
    if settings["executor"] not in ("local", "ray"):
        raise VlmbenchError(f"--executor {settings['executor']!r}: choose local or ray")
    if settings["ray_address"] is not None and settings["executor"] != "ray":
        raise VlmbenchError("--ray-address needs --executor ray")
    part = parse_shard(settings["shard"]) if settings["shard"] is not None else None
    if settings["executor"] == "ray":
        from vlmbench.preflight import check_ray_installed, probe_ray_address

        check_ray_installed()
        if settings["ray_address"] is not None:
            probe_ray_address(settings["ray_address"])  # an unreachable cluster: one line, before any work
    import pandas as pd  # the heavy imports come only after the options passed
    import torch

    from vlmbench.execute import shard_work
    from vlmbench.runner import execute, plan

    if settings["threads"] is not None:
        torch.set_num_threads(settings["threads"])
    plans = [plan(request) for request in requests]
    work = [(index, job) for index, plan_ in enumerate(plans) for job in plan_.jobs()]
    total = len(work) and sum(len(job) for _, job in work)
    if part is not None:
        work = shard_work(plans, work, *part)
    where = f" (shard {part[0]}/{part[1]} of {total})" if part is not None else ""
    if dry:
        print_plan(plans, work, where)
        return
    notes = [note for plan_ in plans for note in plan_.notes]
    print_notes(notes)
    outputs = sorted({str(plan_.request.output) for plan_ in plans})
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task("loading model", total=sum(plans[i].n_images_of(key) for i, job in work for key in job))
        advance = lambda k: progress.advance(task, k)  # noqa: E731

        def on_cell(protocol: Any, n: int) -> None:
            desc = f"{protocol.data.dataset} · {protocol.model.name} · {protocol.defense.name} · {protocol.attack.name} ε={protocol.threat.eps_label} · batch {protocol.batch_size}"
            progress.update(task, description=desc)

        if settings["executor"] == "ray":
            from vlmbench.ray_executor import execute_on_ray

            outcomes = execute_on_ray(
                plans, work, settings["ray_address"], tuple(options["plugin"] or ()) + tuple(settings.get("plugin", ())),
                settings["threads"], on_advance=advance,
                on_started=lambda n: progress.update(task, description=f"{len(work)} jobs on {n} Ray workers"),
                on_note=lambda message: progress.console.print(f"note: {message}", highlight=False))
        else:
            from vlmbench.finetune import reporting

            outcomes = []
            with reporting(_training_progress(progress)):  # fine-tuning of training-time defenses
                for index, plan_ in enumerate(plans):
                    jobs = [job for i, job in work if i == index]
                    if jobs:
                        outcomes += execute(plan_, on_cell=on_cell, on_advance=advance, jobs=jobs,
                                            on_wait=lambda message: progress.console.print(f"note: {message}", highlight=False))
        progress.update(task, description="done")
    if outcomes:
        print_report(pd.concat([o.rows for o in outcomes], ignore_index=True))
    cached = sum(o.status == "cached" for o in outcomes)
    resumed = sum(o.status == "resumed" for o in outcomes)
    console.print(
        f"{len(outcomes)} cells{where} ({cached} already complete, {resumed} resumed) → {', '.join(o + '/' for o in outputs)}",
        highlight=False,
    )
    print_notes(notes)  # again, where the eye lands after the tables


def _request_from_options(o: dict[str, Any]) -> Any:
    """The :class:`~vlmbench.request.RunRequest` of ``vlmbench run``'s options, checked option by option."""
    from vlmbench.preflight import split_values, validate_request_options
    from vlmbench.request import RunRequest

    models, defenses = split_values(o["model"], "--model"), split_values(o["defense"], "--defense")
    attacks, datasets, radii = split_values(o["attack"], "--attack"), split_values(o["dataset"], "--dataset"), split_values(o["eps"], "--eps")
    validate_request_options(
        models=models, source_model=o["source_model"], download=o["download"], defenses=defenses, attacks=attacks,
        datasets=datasets, eps=radii, norm=o["norm"], step_size=o["step_size"], restarts=o["restarts"], samples=o["samples"],
        selection=o["selection"], seed=o["seed"], batch_size=o["batch_size"], threads=o["threads"], track=o["track"],
        eot=o["eot"], eval_draws=o["eval_draws"], adaptive_steps=o["adaptive_steps"], source_defense=o["source_defense"],
        precision=o["precision"],
    )
    from vlmbench.resolve import resolve_model

    for spec in (*models, *([o["source_model"]] if o["source_model"] else [])):  # registered plugins' weights: before any work
        resolve_model(spec).check_weights(o["download"])
    defaults = RunRequest()
    return RunRequest(
        models=models or defaults.models,
        defenses=defenses or defaults.defenses,
        attacks=attacks or defaults.attacks,
        datasets=datasets or (("*",) if o["protocol"] else defaults.datasets),
        eps=radii or defaults.eps,
        norm=o["norm"],
        step_size=o["step_size"],
        restarts=o["restarts"],
        random_start=o["random_start"],
        n_samples=o["samples"],
        selection=o["selection"],
        seed=o["seed"],
        batch_size=o["batch_size"],
        split=o["split"],
        device=o["device"],
        data_root=o["data_root"],
        download=o["download"],
        protocol=o["protocol"],
        output=o["output"],
        attack_params=tuple(o["attack_param"] or ()),
        defense_params=tuple(o["defense_param"] or ()),
        track=o["track"],
        eot_draws=o["eot"],
        eval_draws=o["eval_draws"],
        adaptive_steps=o["adaptive_steps"],
        source_model=o["source_model"],
        source_defense=o["source_defense"],
        target=o["target"],
        superclasses=o["superclasses"],
        cascade=o["cascade"],
        eps_sweep=o["eps_sweep"],
        save_adversarials=o["save_adversarials"],
        precision=o["precision"],
    )


def _matrix_requests(o: dict[str, Any], given: set[str]) -> tuple[list[Any], dict[str, Any]]:
    """The requests and run options of ``--matrix FILE``; other request options beside it are refused
    (one place says what runs), and ``--device``, ``--data-root`` and ``--output`` given beside it (where
    to run, read and write) apply to every entry."""
    import dataclasses

    from vlmbench.matrix import load_matrix

    clash = sorted(name for name in given if name not in (*MATRIX_COMPANIONS, "matrix"))
    if clash:
        flags = ", ".join("--" + name.replace("_", "-") for name in clash)
        raise VlmbenchError(f"{flags} given with --matrix {o['matrix']}: the matrix file says what to run; set "
                            f"{'it' if len(clash) == 1 else 'them'} in the file (docs/matrix.md)")
    loaded = load_matrix(o["matrix"])
    overrides = {name: o[name] for name in ("device", "data_root", "output") if name in given}
    return [dataclasses.replace(r, **overrides) for r in loaded.requests], dict(loaded.run_options)


def print_plan(plans: list[Any], work: list[Any], where: str) -> None:
    """``vlmbench plan``: one row per cell (status, images, estimated model calls, batch size), then the totals
    and a time estimate per model from the throughput measured in the output folder on this device."""
    from vlmbench.execute import measured_seconds_per_call, preview
    from vlmbench.precision import hardware_name

    cells = [(index, cell) for index, plan_ in enumerate(plans)
             for cell in preview(plan_, [job for i, job in work if i == index])]
    table = Table(title=f"plan: {len(cells)} cells{where}", title_justify="left")
    for column, justify in (("cell", "left"), ("images", "right"), ("forward", "right"), ("backward", "right"),
                            ("batch", "right"), ("precision", "left"), ("status", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for _, cell in cells:
        status = f"partial {cell.batches_done}/{cell.batches} batches" if cell.status == "partial" else cell.status
        batch = "?" if cell.batch_size is None else str(cell.batch_size)  # unknown until trained, when chosen
        table.add_row(cell.label, str(cell.images), f"{cell.forward:,.0f}", f"{cell.backward:,.0f}", batch, cell.precision,
                      status)
    console.print(table)
    counts = {s: sum(c.status == s for _, c in cells) for s in ("complete", "partial", "pending", "needs training")}
    todo = [(index, c) for index, c in cells if c.status != "complete"]
    forward, backward = sum(c.forward for _, c in todo), sum(c.backward for _, c in todo)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; to compute: {sum(c.images for _, c in todo):,} images, "
                  f"{forward:,.0f} forward and {backward:,.0f} backward model calls (estimates: an attack that stops early "
                  "does fewer; a test-time defense multiplies each call by its inference cost)", highlight=False)
    by_model: dict[tuple[str, str, str], float] = {}
    for index, c in todo:
        plan_ = plans[index]
        model = plan_.models[c.key.model].name
        slot = (model, str(plan_.request.output), hardware_name(plan_.device))  # not run_metadata: it runs git
        by_model[slot] = by_model.get(slot, 0.0) + c.forward + 2 * c.backward
    for (model, output, device), calls in by_model.items():
        rate = measured_seconds_per_call(Path(output), model, device)
        if rate is None:
            console.print(f"{model}: no throughput measured on {device} in {output}/ (run a few cells first); no time "
                          "estimate", highlight=False)
            continue
        console.print(f"{model}: about {_duration(calls * rate[0])} on {device} ({rate[0] * 1e3:.2f} ms per model call "
                      f"measured over {rate[1]} finished cells in {output}/)", highlight=False)
    if counts["needs training"]:
        console.print("cells marked 'needs training' first fine-tune their defense (vlmbench train), which these figures leave out",
                      highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_notes(notes: list[str]) -> None:
    """Print the plan's notes (what the run does differently from what was asked) to stderr."""
    for note in notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def print_report(rows: Any) -> None:
    """The accuracy tables and the sanity flags of per-sample result rows."""
    from vlmbench import results

    print_summary(results.summarize(rows))
    print_flags(rows)


def print_summary(summary: Any) -> None:
    """Print :func:`vlmbench.results.summarize` as one table per (model, defense, track, norm, ε):
    a row per dataset (and the mean), the clean accuracy, and one robust-accuracy column per attack;
    the caption gives the defended model's inference cost relative to the undefended one."""
    keys = ["model", "defense", "track", "norm", "eps_label", "variant"]
    for (model, defense, track, norm, eps, variant), group in summary.groupby(keys, sort=False):
        measured = f" · {variant}" if variant else ""  # cells measured differently are separate tables
        title = f"{model} · defense {defense} · {track} · {norm} ε={eps}{measured} (robust %)"
        table = Table(title=title, title_justify="left")
        table.add_column("dataset", no_wrap=True)
        table.add_column("n", justify="right")
        table.add_column("clean %", justify="right")
        attacks = list(dict.fromkeys(group["attack"]))
        # extra columns where cells measured them: target hits, superclass accuracy (vlmbench.targets)
        extras = [(f"{attack} {title}", attack, metric) for attack in attacks
                  for metric, title in (("target_success", "hit %"), ("super_robust_acc", "super %"))
                  if group.loc[group["attack"] == attack, metric].notna().any()]
        super_clean = group["super_clean_acc"].notna().any()
        for attack in attacks:
            table.add_column(attack, justify="right", overflow="fold")
        if super_clean:
            table.add_column("clean super %", justify="right")
        for column, _, _ in extras:
            table.add_column(column, justify="right", overflow="fold")
        for dataset, rows in group.groupby("dataset", sort=False):
            by_attack = {r.attack: r for r in rows.itertuples()}

            def cell(attack: str, metric: str) -> str:
                row = by_attack.get(attack)
                value = getattr(row, metric) if row is not None else float("nan")
                return "" if value != value else f"{value:.1f}"

            table.add_row(
                dataset,
                str(int(rows["n"].iloc[0])),
                f"{rows['clean_acc'].mean():.1f}",
                *[cell(attack, "robust_acc") for attack in attacks],
                *([f"{rows['super_clean_acc'].mean():.1f}"] if super_clean else []),
                *[cell(attack, metric) for _, attack, metric in extras],
                style="bold" if dataset == "mean" else None,
                end_section=dataset == "mean",
            )
        table.caption = (f"inference per image vs undefended: ×{group['cost_time_ratio'].mean():.1f} time, "
                         f"{group['cost_forward'].mean():.1f} forward + {group['cost_backward'].mean():.1f} "
                         "backward encoder passes (undefended: 1 + 0)")
        for note in dict.fromkeys(n for n in group["note"] if n):
            table.caption += f"\n{note}"
        table.caption_justify = "left"
        console.print(table)


def print_flags(rows: Any) -> None:
    """List the sanity flags raised by ``rows``, each with its documentation anchor."""
    from vlmbench.flags import DOCS, FLAGS, result_flags

    found = result_flags(rows)
    if found.empty:
        console.print("sanity flags: none", highlight=False)
        return
    console.print(f"sanity flags ({len(found)}):", highlight=False)
    for flag in found.itertuples(index=False):
        where = " · ".join(v for v in (flag.model, flag.defense, flag.attack, flag.track, flag.eps_label, flag.dataset,
                                       flag.variant) if v not in ("*", ""))
        detail = f"{flag.detail}; " if flag.detail else ""
        console.print(f"  [bold]{flag.flag}[/] ({DOCS}#{flag.flag}) {where}: {detail}{FLAGS[flag.flag]}",
                      highlight=False, soft_wrap=True)


@app.command("list")
@user_errors
def list_plugins(
    kind: Annotated[str | None, typer.Argument(help="defenses, attacks, datasets or models (default: all).")] = None,
    data_root: Annotated[Path | None, typer.Option(envvar="VLMBENCH_DATA_ROOT", help="Root folder of real datasets.")] = None,
    plugin: PluginOption = None,
) -> None:
    """List registered plugins with a one-line description each (defenses: kind, randomness, BPDA steps)."""
    from vlmbench.listing import COLUMNS, rows
    from vlmbench.registry import KINDS, PluginError, plugins, unknown_name_message

    if kind is not None and kind not in KINDS:
        raise PluginError(unknown_name_message("plugin kind", kind, list(KINDS)))
    _load_plugin_sources(plugin)
    out = console if console.is_terminal else Console(width=max(console.width, 240))  # piped: one line a row
    for name in [kind] if kind else list(KINDS):
        table = Table(title=name, title_justify="left")
        columns = COLUMNS[name]
        for column in ("name", "description", *columns):
            table.add_column(column)
        for plugin_name, cells, error in rows(plugins()[name], data_root):
            if error is not None:
                table.add_row(plugin_name, f"[red]broken:[/] {error}", *[""] * len(columns))
            else:
                table.add_row(plugin_name, *cells)
        out.print(table)


def _training_progress(progress: Progress) -> Callable[[str, str, int, int], None]:
    """A fine-tuning progress callback that shows each training run as its own bar (loss, ETA)."""
    tasks: dict[str, Any] = {}

    def report(key: str, description: str, done: int, total: int) -> None:
        if key not in tasks:
            tasks[key] = progress.add_task(description, total=total, completed=done)
        progress.update(tasks[key], description=description, completed=done)

    return report


@app.command()
@user_errors
def parity(
    precision: Annotated[str, typer.Option(help="The faster precision to measure against fp32: bf16 or tf32 (CUDA).")],
    model: Annotated[str, typer.Option(help="The model (registered name, ARCH:TAG, local-dir:PATH, ...).")] = "world-vit",
    defense: Annotated[str, typer.Option(help="The defense; its test-time parts key the record (training-time ones run on the same architecture).")] = "none",
    attack: Annotated[list[str] | None, typer.Option(help="Attacks (default: pgd-10).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="Datasets or patterns (default: world-*).")] = None,
    eps: Annotated[list[str] | None, typer.Option(help="Radii (default: 1/255 and 4/255).")] = None,
    samples: Annotated[int, typer.Option(help="Images per dataset; together at least 200 (default: 32).")] = 32,
    seed: Annotated[int, typer.Option(help="Base seed (images and random starts).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    data_root: Annotated[Path | None, typer.Option(envvar="VLMBENCH_DATA_ROOT", help="Root folder of real datasets.")] = None,
    plugin: PluginOption = None,
) -> None:
    """Measure whether a faster precision gives fp32's robust accuracy here, and record it for --precision auto."""
    from vlmbench.preflight import split_values, validate_request_options

    _load_plugin_sources(plugin)
    attacks = split_values(attack, "--attack") or ("pgd-10",)
    datasets = split_values(dataset, "--dataset") or ("world-*",)
    radii = split_values(eps, "--eps") or ("1/255", "4/255")
    validate_request_options(models=(model,), defenses=(defense,), attacks=attacks, datasets=datasets, eps=radii,
                             samples=samples, seed=seed, batch_size=batch_size, threads=threads, precision=precision)
    import torch

    from vlmbench.parity import measure
    from vlmbench.precision import MIN_SPEEDUP
    from vlmbench.request import RunRequest

    if threads is not None:
        torch.set_num_threads(threads)
    request = RunRequest(models=(model,), defenses=(defense,), attacks=attacks, datasets=datasets, eps=radii,
                         n_samples=samples, selection="balanced", seed=seed, batch_size=batch_size, device=device,
                         data_root=data_root, eps_sweep=False)
    with console.status(f"measuring {precision} against fp32 (three runs)"):
        record = measure(request, precision)
    key = record["key"]
    console.print(f"{precision} vs fp32 · {key['model']} ({key['test_time_defense']}) · {key['hardware']} · torch {key['torch']}",
                  highlight=False)
    console.print(f"  {record['samples']} images in {record['cells']} cells: robust fp32 {record['robust_fp32']:.1f}% · "
                  f"fp32 other starts {record['robust_fp32_other_starts']:.1f}% · {precision} {record['robust_candidate']:.1f}%",
                  highlight=False)
    console.print(f"  agreement with fp32: {precision} {record['agreement_candidate']:.1f}% · fp32 other starts "
                  f"{record['agreement_fp32_other_starts']:.1f}%   speed-up {record['speedup']:.2f}x", highlight=False)
    if record["passed"]:
        faster = "" if record["speedup"] >= MIN_SPEEDUP else f" (--precision auto keeps fp32: not {MIN_SPEEDUP:g}x faster)"
        console.print(f"  parity: passed; --precision {precision} may run here{faster}", highlight=False)
    else:
        console.print(f"  parity: failed: {'; '.join(record['why_not'])}; {precision} stays refused here", highlight=False)


@app.command()
@user_errors
def train(
    defense: Annotated[str, typer.Option(help="Training-time defense: tecoa, pmg_aft, fare, tga_zsr, hpt_gpd, ...")],
    model: Annotated[str, typer.Option(help="Model to fine-tune (registered name, ARCH:TAG, local-dir:PATH, ...).")] = "world-vit",
    defense_param: Annotated[list[str] | None, typer.Option(help="Defense parameter key=value (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed (as in vlmbench run).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    data_root: Annotated[Path | None, typer.Option(envvar="VLMBENCH_DATA_ROOT", help="Root folder of training data (tiny-imagenet-200/, imagenet/).")] = None,
    plugin: PluginOption = None,
) -> None:
    """Fine-tune a model with a training-time defense, or find it in the cache; `vlmbench run --defense` reuses it."""
    import torch

    from vlmbench.paths import cache_dir
    from vlmbench.config import build_config
    from vlmbench.defense import DefenseContext
    from vlmbench.finetune import CURVE_FILE, reporting
    from vlmbench.registry import plugins
    from vlmbench.resolve import resolve_model

    if threads is not None:
        torch.set_num_threads(threads)
    _load_plugin_sources(plugin)
    cls = plugins().defenses.get(defense)
    if not cls.is_training_time():
        raise VlmbenchError(f"defense {defense!r} has no training-time part ({cls.kind()}); nothing to train")
    instance = cls(build_config(cls.Config, defense_param or [], f"defense {defense!r}"))
    target = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    original = resolve_model(model).load(target)
    context = DefenseContext(cache_dir() / "defenses", target, seed, data_root, original)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console) as progress, reporting(_training_progress(progress)):
        adapted = instance.adapt_model(original, context)
    folder = getattr(instance, "checkpoint", None)
    where = f" → {folder} ({CURVE_FILE} beside the weights)" if folder is not None else ""
    console.print(f"{defense} on {model}: weights fingerprint {original.fingerprint} → {adapted.fingerprint}{where}", highlight=False)


@results_app.command("show")
@user_errors
def results_show(path: Annotated[Path, typer.Argument(help="A results file or folder.")]) -> None:
    """Print the clean/robust accuracy table of a results file or folder."""
    from vlmbench import results

    print_report(results.load_results(path))


@results_app.command("validate")
@user_errors
def results_validate(
    paths: Annotated[list[Path], typer.Argument(help="Results files, results folders or submission folders.")],
) -> None:
    """Check results (and submissions) before publishing: one line per file or submission, `ok` or
    `FAIL: reason`; exit status 0 when all are valid, 1 otherwise (docs/leaderboards.md)."""
    from vlmbench.validate import validate_items

    failed = False
    for path in paths:
        for what, problems in validate_items(path):
            if problems:
                failed = True
                console.print(f"{what}: FAIL: {'; '.join(problems)}", highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(f"{what}: ok", highlight=False, markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@results_app.command("verify")
@user_errors
def results_verify(
    paths: Annotated[list[Path], typer.Argument(help="Results files or folders.")],
    require_adversarials: Annotated[bool, typer.Option("--require-adversarials", help="A cell of an attack without its adversarial file fails.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Also write the outcome per cell as JSON (for `leaderboard build --verification`).")] = None,
    data_root: Annotated[Path | None, typer.Option(envvar="VLMBENCH_DATA_ROOT", help="Root folder of real datasets.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    plugin: PluginOption = None,
) -> None:
    """Re-check stored adversarial images (run --save-adversarials): each in [0,1] and the recorded
    ε-ball of its clean image, and re-scored by the rebuilt defended model to the recorded predictions.
    One line per cell: `ok (n/n agree)`, `FAIL: reason`, `cannot verify: reason` or `no adversarial
    file`; exit status 1 on any FAIL or cannot verify, 0 otherwise (docs/results-schema.md)."""
    from vlmbench.preflight import validate_request_options

    validate_request_options(threads=threads)  # the run command's own check, before torch is imported
    _load_plugin_sources(plugin)
    import torch

    from vlmbench.verify import report_record, verify_paths

    if threads is not None:
        torch.set_num_threads(threads)
    outcomes = []
    for file, outcome in verify_paths(paths, data_root=data_root, device=device, require_adversarials=require_adversarials):
        outcomes.append((file, outcome))
        console.print(f"{file}: {outcome.line}", highlight=False, markup=False, soft_wrap=True)
    if report is not None:
        from vlmbench.paths import write_json

        write_json(report_record(outcomes), report)
    if any(outcome.failed for _, outcome in outcomes):
        raise typer.Exit(1)


@leaderboard_app.command("build")
@user_errors
def leaderboard_build(
    results: Annotated[list[Path] | None, typer.Argument(help="Results folders (or Parquet files) to put on the boards.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Site folder to write (replaced whole; must be new, empty or a previous site).")] = Path("site"),
    submissions: Annotated[Path | None, typer.Option("--submissions", help="Folder of submissions (one sub-folder each: submission.json + results/).")] = None,
    reproduction: Annotated[Path | None, typer.Option("--reproduction", help="Report of `python -m vlmbench.leaderboards.world reproduce`: shown on the pages.")] = None,
    verification: Annotated[Path | None, typer.Option("--verification", help="Report of `vlmbench results verify --report`: rows whose cells all verified are marked.")] = None,
) -> None:
    """Build the static site: one page per board, defense, model and dataset, with CSV/JSON downloads.
    Invalid submissions are left out with a warning line each; the rest is built."""
    from vlmbench.leaderboards.site import build

    if not results and submissions is None:
        raise VlmbenchError("nothing to build: give results folders and/or --submissions DIR")
    report = build(list(results or []), out, submissions, reproduction, verification)
    for line in report.invalid:
        err_console.print(f"[yellow]warning:[/] invalid entry {line}", highlight=False, markup=True, soft_wrap=True)
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"open {(report.out / 'index.html').absolute()} or run: vlmbench leaderboard serve {report.out}",
                  highlight=False, markup=False, soft_wrap=True)


@leaderboard_app.command("serve")
@user_errors
def leaderboard_serve(
    site: Annotated[Path, typer.Argument(help="Site folder written by `vlmbench leaderboard build`.")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 8000,
) -> None:
    """Serve a built site on http://127.0.0.1:PORT/ until interrupted (Ctrl-C)."""
    from vlmbench.leaderboards.site import serve

    serve(site, port)


@results_app.command("schema")
def results_schema() -> None:
    """Print the per-sample results schema."""
    from vlmbench import results

    table = Table()
    for column in ("column", "type", "description"):
        table.add_column(column)
    for row in results.describe_schema():
        table.add_row(*row)
    console.print(table)


def _print_new_package(folder: Path, files: list[str], kind: str, name: str) -> None:
    console.print(f"created {folder}/", highlight=False, markup=False)
    for relative in files:
        console.print(f"  {relative}", highlight=False, markup=False)
    console.print(
        f"next: fill in src/{folder.name.replace('-', '_')}/plugin.py (every TODO and REPLACE), then\n"
        f"  cd {folder} && pip install -e '.[test]' && pytest\n"
        f"  vlmbench list {kind}s    # shows {name}",
        highlight=False, markup=False, soft_wrap=True,
    )


OutOption = Annotated[Path, typer.Option("--out", help="Folder in which vlmbench-NAME/ is created.")]


@new_app.command("defense")
@user_errors
def new_defense(
    name: Annotated[str, typer.Argument(help="Plugin name: lowercase letters, digits, '_' and '-' (module vlmbench_NAME).")],
    kind: Annotated[str, typer.Option("--kind", help="training (fine-tuning, FineTuneDefense) or test-time (wraps the classifier).")],
    out: OutOption = Path("."),
) -> None:
    """Create DIR/vlmbench-NAME/: a pip-installable defense plugin that runs as generated, with its tests."""
    from vlmbench.scaffold import new_plugin

    folder, files = new_plugin("defense", name, out, defense_kind=kind)
    _print_new_package(folder, files, "defense", name)


@new_app.command("attack")
@user_errors
def new_attack(
    name: Annotated[str, typer.Argument(help="Plugin name: lowercase letters, digits, '_' and '-' (module vlmbench_NAME).")],
    out: OutOption = Path("."),
) -> None:
    """Create DIR/vlmbench-NAME/: a pip-installable attack plugin that runs as generated, with its tests."""
    from vlmbench.scaffold import new_plugin

    folder, files = new_plugin("attack", name, out)
    _print_new_package(folder, files, "attack", name)


def _check(kind: str, name: str, options: dict[str, Any], json_path: Path | None, workdir: Path | None,
           device: str, threads: int | None, plugin: list[str] | None) -> None:
    """Run ``vlmbench check KIND NAME``: print the report, write it as JSON, exit 1 on a failure."""
    from vlmbench.preflight import validate_request_options

    validate_request_options(threads=threads)
    _load_plugin_sources(plugin)
    import torch

    from vlmbench.check import CheckSettings, check_attack, check_defense, report_lines, write_report

    settings = CheckSettings(**options)
    settings.eps_value()  # a bad ε is refused before anything runs
    if threads is not None:
        torch.set_num_threads(threads)
    run = check_defense if kind == "defense" else check_attack
    report = run(name, settings, device=device, workdir=workdir,
                 progress=lambda step: err_console.print(f"[dim]{step}[/]", highlight=False))
    for line in report_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    target = json_path or Path(f"vlmbench-check-{kind}-{name.replace('+', '_')}.json")
    write_report(report, target)
    console.print(f"report: {target}", highlight=False, markup=False, soft_wrap=True)
    if report.status == "fail":
        raise typer.Exit(1)


CheckSamples = Annotated[int, typer.Option(help="Images (class-balanced, seeded) of the check's dataset.")]
CheckSteps = Annotated[int, typer.Option(help="Steps of the white-box attack; 'convergence' runs 4x as many with 2 restarts.")]
CheckEps = Annotated[str, typer.Option(help="The check's l-inf radius; the sweep runs at 1, 4, 16 and 64 times it.")]
CheckJson = Annotated[Path | None, typer.Option("--json", help="Where to write the report (default: vlmbench-check-KIND-NAME.json).")]
CheckWorkdir = Annotated[Path | None, typer.Option(help="Keep the check's result cells in this folder (default: a temporary one).")]
CheckDevice = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
CheckThreads = Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")]
CheckSeed = Annotated[int, typer.Option(help="Base seed.")]
CheckBinarization = Annotated[int | None, typer.Option(help="Images of the binarization test (at most --samples; default 8 or --samples if fewer).")]
CheckOnly = Annotated[list[str] | None, typer.Option("--only", help="Run just this check (repeatable; ids: docs/checks.md).")]


@check_app.command("defense")
@user_errors
def check_defense_command(
    name: Annotated[str, typer.Argument(help="Defense name (registered, --plugin, or a composition a+b).")],
    samples: CheckSamples = 16,
    steps: CheckSteps = 10,
    eps: CheckEps = "1/255",
    eot: Annotated[int, typer.Option(help="EOT draws of the adaptive attack on a stochastic defense.")] = 5,
    eval_draws: Annotated[int, typer.Option(help="Draws scoring a stochastic defense.")] = 5,
    square_steps: Annotated[int, typer.Option(help="Square's budget (50 queries per step).")] = 10,
    binarization_samples: CheckBinarization = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Evaluate a training-time defense with its smoke_config() (fast, barely trained).")] = False,
    only: CheckOnly = None,
    seed: CheckSeed = 0,
    json_path: CheckJson = None,
    workdir: CheckWorkdir = None,
    device: CheckDevice = "auto",
    threads: CheckThreads = None,
    plugin: PluginOption = None,
) -> None:
    """Check a defense on the embedded world: its contract (output, randomness, BPDA, gradients, cost,
    training cache) and the soundness of its evaluation (eps sweep, convergence, white-box vs transfer vs
    noise, Square, adaptive vs oblivious, targeted, binarization test). Exit 1 on a failure, 0 otherwise
    (warnings are listed). Each check: docs/checks.md."""
    options = {"samples": samples, "steps": steps, "eps": eps, "eot_draws": eot, "eval_draws": eval_draws,
               "square_steps": square_steps, "binarization_samples": binarization_samples, "smoke": smoke, "seed": seed,
               "only": tuple(only or ())}
    _check("defense", name, options, json_path, workdir, device, threads, plugin)


@check_app.command("attack")
@user_errors
def check_attack_command(
    name: Annotated[str, typer.Argument(help="Attack name (registered or --plugin).")],
    samples: CheckSamples = 16,
    steps: CheckSteps = 10,
    eps: CheckEps = "1/255",
    binarization_samples: CheckBinarization = None,
    only: CheckOnly = None,
    seed: CheckSeed = 0,
    json_path: CheckJson = None,
    workdir: CheckWorkdir = None,
    device: CheckDevice = "auto",
    threads: CheckThreads = None,
    plugin: PluginOption = None,
) -> None:
    """Check an attack against the undefended world model: its contract (the eps-ball and [0,1], its
    randomness) and its strength (eps sweep, convergence, beats random noise, targeted, binarization
    test). Exit 1 on a failure, 0 otherwise. Each check: docs/checks.md."""
    options = {"samples": samples, "steps": steps, "eps": eps, "binarization_samples": binarization_samples, "seed": seed,
               "only": tuple(only or ())}
    _check("attack", name, options, json_path, workdir, device, threads, plugin)


@world_app.command("train")
@user_errors
def world_train(
    model: Annotated[str, typer.Option(help="world-vit or world-rn.")],
    out: Annotated[Path, typer.Option(help="Output folder (open_clip local-dir format).")],
    steps: Annotated[int | None, typer.Option(help="Override the shipped recipe's optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the recipe's batch size.")] = None,
    n_pairs: Annotated[int | None, typer.Option(help="Override the recipe's number of pretraining pairs.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Override the recipe's warm-up steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the recipe's seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="Override the recipe's CPU threads.")] = None,
) -> None:
    """Train a world CLIP model from its shipped recipe (contrastive, CPU, minutes)."""
    import dataclasses
    import json

    from vlmbench.registry import PluginError, unknown_name_message
    from vlmbench.world.train import RECIPE_FILE, RECIPES, train_world_model

    if model not in RECIPES:
        raise PluginError(unknown_name_message("world model", model, sorted(RECIPES)))
    if out.exists() and any(out.iterdir()):
        raise VlmbenchError(f"output folder {out} is not empty; choose a new folder")
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, n_pairs=n_pairs, warmup_steps=warmup_steps, seed=seed, threads=threads).items() if v is not None}
    recipe = dataclasses.replace(RECIPES[model], **overrides)
    path = train_world_model(recipe, out, progress=True)
    record = json.loads((path / RECIPE_FILE).read_text())
    console.print(
        f"{model}: loss {record['initial_loss']:.3f} → {record['final_loss']:.3f} in {record['wall_time_s']} s; "
        f"sha256 {record['sha256'][:16]}… → {path}", highlight=False
    )


@world_app.command("check")
@user_errors
def world_check(
    samples: Annotated[int, typer.Option(help="Images per world dataset.")] = 500,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Measure the world models against their quality bars (clean, white-box PGD-10, transfer)."""
    import torch

    from vlmbench.world.quality import measure, verdicts

    if threads is not None:
        torch.set_num_threads(threads)
    table = measure(n_samples=samples)
    for model, part in table.groupby("model", sort=False):
        out = Table(title=f"{model} · PGD-10 ℓ∞ ε=4/255 · {samples} images per dataset", title_justify="left")
        for column in ("dataset", "classes", "chance %", "clean %", "white-box %", "transfer %"):
            out.add_column(column, justify="left" if column == "dataset" else "right")
        for row in part.itertuples():
            out.add_row(row.dataset, str(row.classes), f"{row.chance:.1f}", f"{row.clean:.1f}",
                        f"{row.whitebox:.1f}", f"{row.transfer:.1f}")
        out.add_row("mean", "", f"{part['chance'].mean():.1f}", f"{part['clean'].mean():.1f}",
                    f"{part['whitebox'].mean():.1f}", f"{part['transfer'].mean():.1f}", style="bold")
        console.print(out)
    failed = []
    for verdict in verdicts(table).itertuples():
        bars = {k: getattr(verdict, k) for k in ("every_dataset_above_chance_bar", "mean_clean_bar", "whitebox_bar", "transfer_gap_bar")}
        console.print(f"{verdict.model}: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in bars.items()), highlight=False)
        failed += [f"{verdict.model}:{k}" for k, v in bars.items() if not v]
    if failed:
        raise VlmbenchError("quality bars not met: " + ", ".join(failed))
