"""Quality bars of the embedded world's models (``vlmbench world check``).

For each world model and each world dataset: zero-shot clean accuracy, accuracy under white-box
ℓ∞ PGD-10 at ε = 4/255, and accuracy of the *other* model on the same adversarial images (transfer).
The bars the shipped models must meet:

1. clean accuracy ≥ 1.5 × chance on every dataset, and ≥ 60 % averaged over the datasets;
2. white-box PGD-10 at 4/255 leaves < 10 % averaged over the datasets;
3. transfer leaves the other model ≥ 30 points more accurate than white-box PGD does (averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from vlmbench.attacks.pgd import PGD
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins
from vlmbench.world.datasets import WORLD_DATASETS


@dataclass(frozen=True)
class Bars:
    chance_multiple: float = 1.5
    mean_clean: float = 60.0
    max_whitebox: float = 10.0
    min_transfer_gap: float = 30.0


def measure(
    models: tuple[str, str] = ("world-vit", "world-rn"),
    n_samples: int = 500,
    eps: str = "4/255",
    batch_size: int = 250,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (model, dataset): chance, clean, white-box and transfer accuracy (percent).

    ``transfer`` of model A is A's accuracy on PGD examples crafted on the other model.
    """
    registry = plugins()
    loaded = {name: registry.models.get(name).load() for name in models}
    threat = ThreatModel.build("linf", eps, steps=10)
    rows = []
    for dataset_name, plugin in WORLD_DATASETS.items():
        dataset = plugin.load(None, "test")
        n = min(n_samples, len(dataset))
        classifiers = {
            name: ZeroShotClassifier.build(model, dataset.classnames, dataset.templates) for name, model in loaded.items()
        }
        correct = {name: {"clean": 0, "whitebox": 0, "transfer": 0} for name in models}
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            x = torch.stack([img for img, _ in items])
            y = torch.tensor([label for _, label in items])
            adversarial = {}
            for name, zs in classifiers.items():
                generator = torch.Generator().manual_seed(seed + start)
                adversarial[name] = PGD(threat).perturb(zs, x, y, generator).detach()
            with torch.no_grad():
                for name, zs in classifiers.items():
                    other = next(m for m in models if m != name)
                    correct[name]["clean"] += int((zs(x).argmax(1) == y).sum())
                    correct[name]["whitebox"] += int((zs(adversarial[name]).argmax(1) == y).sum())
                    correct[name]["transfer"] += int((zs(adversarial[other]).argmax(1) == y).sum())
        for name in models:
            rows.append(
                {
                    "model": name,
                    "dataset": dataset_name,
                    "classes": dataset.num_classes,
                    "chance": 100 / dataset.num_classes,
                    **{k: 100 * v / n for k, v in correct[name].items()},
                }
            )
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame, bars: Bars = Bars()) -> pd.DataFrame:
    """Per model: the averages and whether each bar is met."""
    out = []
    for model, part in table.groupby("model", sort=False):
        clean, whitebox, transfer = part["clean"].mean(), part["whitebox"].mean(), part["transfer"].mean()
        out.append(
            {
                "model": model,
                "mean_clean": clean,
                "mean_whitebox": whitebox,
                "mean_transfer": transfer,
                "every_dataset_above_chance_bar": bool((part["clean"] >= bars.chance_multiple * part["chance"]).all()),
                "mean_clean_bar": clean >= bars.mean_clean,
                "whitebox_bar": whitebox < bars.max_whitebox,
                "transfer_gap_bar": transfer - whitebox >= bars.min_transfer_gap,
            }
        )
    return pd.DataFrame(out)
