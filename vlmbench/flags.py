"""Sanity flags: signs that a robust accuracy may overstate robustness (after AutoAttack's checks).

Each flag has a name and an explanation in ``docs/flags.md`` (anchor = the name). Two are measured
per cell while it runs and stored in every row's ``flags`` column; the others compare cells and are
derived from the stored rows when results are shown.

Per cell (:func:`cell_flags`, on the cell's first batch):
    ``forward-randomness``: two forward passes of the defended model on the same images disagree.
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

import pandas as pd
import torch
import torch.nn.functional as F

FLAGS: dict[str, str] = {
    "forward-randomness": "the defended model's forward pass is random: use EOT (adaptive track) and several seeds",
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


def cell_flags(defended: torch.nn.Module, crafting: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """The per-cell flags, measured on one batch. Draws from torch's global generator."""
    found = []
    with torch.no_grad():
        first = F.normalize(defended(x), dim=1)
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
    eps_label, dataset (``*`` where a flag concerns several values).
    """
    found: list[dict[str, str]] = []
    ident = ["model", "defense", "attack", "track", "norm", "eps_label", "dataset"]

    def add(flag: str, detail: str, where: dict[str, str]) -> None:
        found.append({"flag": flag, "detail": detail, **{k: str(where.get(k, "*")) for k in ident}})

    cells = rows.groupby([*ident, "eps"], sort=False).agg(
        flags=("flags", "first"), clean=("clean_correct", "mean"), adv=("adv_correct", "mean"), robust=("robust", "mean")
    ).reset_index()
    for cell in cells.itertuples(index=False):
        where = cell._asdict()
        for stored in filter(None, cell.flags.split(";")):
            name, _, value = stored.partition("=")
            add(name, (f"fraction {value}" if value.replace(".", "", 1).isdigit() else value) if value else "", where)
        if cell.adv > cell.clean:
            add("robust-above-clean", f"adversarial {100 * cell.adv:.1f}% > clean {100 * cell.clean:.1f}%", where)
    group = ["model", "defense", "track", "norm", "eps_label", "dataset"]
    for key, part in cells.groupby(group, sort=False):
        square = part[part["attack"].str.startswith("square")]
        whitebox = part[~part["attack"].str.startswith("square") & (part["attack"] != "none")]
        if len(square) and len(whitebox) and 100 * square["robust"].min() < 100 * whitebox["robust"].min() - SQUARE_MARGIN:
            add("square-beats-whitebox", f"square {100 * square['robust'].min():.1f}% < white-box "
                f"{100 * whitebox['robust'].min():.1f}%", dict(zip(group, key)))
    for key, part in cells.groupby(["model", "defense", "attack", "track", "norm", "dataset"], sort=False):
        ordered = part.sort_values("eps")
        rises = ordered["robust"].diff() > 0
        if rises.any():
            at = ordered.loc[rises, "eps_label"].iloc[0]
            add("eps-not-monotone", f"robust accuracy rises at ε={at}", dict(zip(["model", "defense", "attack", "track", "norm", "dataset"], key)))
    tracks = cells.pivot_table(index=["model", "defense", "attack", "norm", "eps_label", "dataset"], columns="track", values="robust")
    if {"oblivious", "adaptive"} <= set(tracks.columns):
        weaker = tracks[tracks["adaptive"] > tracks["oblivious"]]
        for key, values in weaker.iterrows():
            add("adaptive-weaker", f"adaptive {100 * values['adaptive']:.1f}% > oblivious {100 * values['oblivious']:.1f}%",
                dict(zip(["model", "defense", "attack", "norm", "eps_label", "dataset"], key)))
    return pd.DataFrame(found, columns=["flag", "detail", *ident])
