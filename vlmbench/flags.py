"""Sanity flags: signs that a robust accuracy may overstate robustness (after AutoAttack's checks).

Each flag has a name and an explanation in ``docs/flags.md`` (anchor = the name). Two are measured
per cell while it runs and stored in every row's ``flags`` column; the others compare cells and are
derived from the stored rows when results are shown.

Per cell (:func:`cell_flags`, on the cell's first batch):
    ``forward-randomness``: two forward passes of the defended model on the same images disagree,
    and the defense did not declare itself ``stochastic``.
    ``zero-gradients``: some images have an exactly zero input gradient on the model the attack crafts on.
    Plus any flags the defended module measures itself: a test-time defense's module may define
    ``sanity_checks(x, y) -> list[str]`` (``name`` or ``name=value``, names from :data:`FLAGS`), e.g.
    ``undefended-agreement`` and ``vanishing-gradients``.

Across cells (:func:`result_flags`):
    ``robust-above-clean``: accuracy on adversarial images is higher than on clean ones.
    ``square-beats-whitebox``: the black-box Square attack is stronger than every white-box attack run.
    ``eps-not-monotone``: robust accuracy rises as ε grows (across cells, and in the quick per-cell
    sweep of the runner, which stores it with the cell's flags).
    ``adaptive-weaker``: the adaptive attack leaves more accuracy than the oblivious one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where rows are read: defenses import this module for FLAGS;
    # torch where a cell is measured: reading results (leaderboards, `results validate`) needs no torch
    import pandas as pd
    import torch

FLAGS: dict[str, str] = {
    "forward-randomness": "the defended model's forward pass is random but the defense does not declare it: declare stochastic = True so EOT and vote scoring are used",
    "zero-gradients": "some inputs have an exactly zero gradient: gradient-based attacks may be masked",
    "undefended-agreement": "the test-time defense predicts like the undefended model on clean images: robustness gains may be masking",
    "vanishing-gradients": "the defense's exact input gradient is vanishingly small: gradient-based attacks may be masked",
    "robust-above-clean": "the attack raised accuracy above clean accuracy: the attack is not working",
    "square-beats-whitebox": "a black-box attack beat every white-box attack: gradients may be masked",
    "eps-not-monotone": "robust accuracy rose as ε grew: the attack is unreliable",
    "adaptive-weaker": "the adaptive attack was weaker than the oblivious one: the adaptive attack is broken",
}
RANDOMNESS_TOLERANCE = 1e-4  # AutoAttack's tolerance on normalised logits
SQUARE_MARGIN = 0.2  # percentage points; AutoAttack warns above this gap
AGREEMENT_THRESHOLD = 0.99  # undefended-agreement: share of identical clean predictions
VANISHING_RATIO = 1e-6  # vanishing-gradients: input-gradient norm relative to the undefended model's
DOCS = "docs/flags.md"


def cell_flags(defended: torch.nn.Module, crafting: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               declared_stochastic: bool = False, predicted: torch.Tensor | None = None) -> list[str]:
    """The per-cell flags, measured on one batch. Draws from torch's global generator.

    ``forward-randomness`` flags *undeclared* randomness only: a defense that declares ``stochastic``
    is scored over several draws and attacked with EOT, which is the correct handling. ``predicted``:
    logits of an earlier no-grad prediction of ``x`` by ``defended``, compared with a new one instead
    of predicting twice."""
    import torch
    import torch.nn.functional as F

    found = []
    if not declared_stochastic:
        with torch.no_grad():
            first = F.normalize(defended(x) if predicted is None else predicted, dim=1)
            second = F.normalize(defended(x), dim=1)
        if (first - second).abs().max() > RANDOMNESS_TOLERANCE:
            found.append("forward-randomness")
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(crafting(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    zero = torch.ones(len(x), dtype=torch.bool) if grad is None else (grad.flatten(1).abs().amax(dim=1) == 0).cpu()
    if zero.any():
        found.append(f"zero-gradients={float(zero.float().mean()):.2f}")
    checks = getattr(defended, "sanity_checks", None)
    if callable(checks):
        for flag in checks(x.detach(), y):
            if flag.partition("=")[0] not in FLAGS:
                raise ValueError(f"sanity_checks returned unknown flag {flag!r}; known: {', '.join(FLAGS)}")
            found.append(flag)
    return found


def result_flags(rows: pd.DataFrame) -> pd.DataFrame:
    """Every flag raised by ``rows`` (per-cell flags included), one row per (flag, cell or group).

    Columns: ``flag``, ``detail``, and the identifying columns model, defense, attack, track, norm,
    eps_label, dataset and variant (:func:`vlmbench.results.describe_cells`; ``*`` where a flag
    concerns several values).

    The unit is the cell (``cell_id``; hand-made rows without one: one cell per display key), and
    cross-cell flags compare only cells measured the same way apart from what the flag compares
    (:func:`vlmbench.results.cell_description`): ``square-beats-whitebox`` cells on the same images
    in the same setting (attack parts aside), ``eps-not-monotone`` cells that differ in ε (and the
    step size it implies) only, ``adaptive-weaker`` cells that differ in the track (and what it
    implies: EOT, BPDA, start, defense loss) only.
    """
    import pandas as pd

    from vlmbench import results

    found: list[dict[str, str]] = []
    ident = ["model", "defense", "attack", "track", "norm", "eps_label", "dataset", "variant"]

    def add(flag: str, detail: str, where: dict[str, object]) -> None:
        found.append({"flag": flag, "detail": detail, **{k: str(where.get(k, "*")) for k in ident}})

    def one(variants: pd.Series) -> dict[str, object]:
        """The group's variant: labels are per summary table, and "" means nothing to tell apart there."""
        labels = set(variants) - {""}
        return {"variant": labels.pop() if len(labels) == 1 else "" if not labels else "*"}

    rows = rows.assign(cell_id=results.cell_ids(rows))
    if "robust_rate" in rows:  # compare the figures summaries show: the expectation over a random defense's draws
        rows = rows.assign(robust=rows["robust_rate"])
    described = results.describe_cells(rows)
    shown = ["model", "defense", "attack", "track", "norm", "eps_label", "dataset", "eps"]
    cells = rows.groupby("cell_id", sort=False).agg(
        **{c: (c, "first") for c in shown},
        flags=("flags", "first"), clean=("clean_correct", "mean"), adv=("adv_correct", "mean"), robust=("robust", "mean"),
    )
    described = described.loc[cells.index]
    cells["variant"] = [", ".join(filter(None, parts)) for parts in zip(described["variant"], described["attack_variant"])]
    descriptions = described["description"]
    cells["_images"] = [results.description_key(d, results.is_attack_part) for d in descriptions]
    cells["_but_eps"] = [results.description_key(d, results.is_eps_part) for d in descriptions]
    cells["_but_track"] = [results.description_key(d, results.is_track_part) for d in descriptions]
    for cell in cells.reset_index().to_dict("records"):
        for stored in filter(None, cell["flags"].split(";")):
            name, _, value = stored.partition("=")
            add(name, (f"fraction {value}" if value.replace(".", "", 1).isdigit() else value) if value else "", cell)
        if cell["adv"] > cell["clean"]:
            add("robust-above-clean", f"adversarial {100 * cell['adv']:.1f}% > clean {100 * cell['clean']:.1f}%", cell)
    group = ["model", "defense", "track", "norm", "eps_label", "dataset"]
    for key, part in cells.groupby([*group, "_images"], sort=False):
        square = part[part["attack"].str.startswith("square")]
        whitebox = part[~part["attack"].str.startswith("square") & (part["attack"] != "none")]
        if len(square) and len(whitebox) and 100 * square["robust"].min() < 100 * whitebox["robust"].min() - SQUARE_MARGIN:
            add("square-beats-whitebox", f"square {100 * square['robust'].min():.1f}% < white-box "
                f"{100 * whitebox['robust'].min():.1f}%", {**dict(zip(group, key)), **one(part["variant"])})
    sweep = ["model", "defense", "attack", "track", "norm", "dataset"]
    for key, part in cells.groupby([*sweep, "_but_eps"], sort=False):
        per_eps = part.groupby("eps").agg(robust=("robust", "min"), eps_label=("eps_label", "first")).sort_index()
        rises = per_eps["robust"].diff() > 0
        if rises.any():
            at = per_eps.loc[rises, "eps_label"].iloc[0]
            add("eps-not-monotone", f"robust accuracy rises at ε={at}", {**dict(zip(sweep, key)), **one(part["variant"])})
    same = ["model", "defense", "attack", "norm", "eps_label", "dataset"]
    for key, part in cells.groupby([*same, "_but_track"], sort=False):
        oblivious, adaptive = part[part["track"] == "oblivious"], part[part["track"] == "adaptive"]
        if len(oblivious) and len(adaptive) and adaptive["robust"].max() > oblivious["robust"].min():
            add("adaptive-weaker", f"adaptive {100 * adaptive['robust'].max():.1f}% > oblivious "
                f"{100 * oblivious['robust'].min():.1f}%", {**dict(zip(same, key)), **one(part["variant"])})
    return pd.DataFrame(found, columns=["flag", "detail", *ident])
