"""The world's quality measurement (``vlmbench world check``) on a few images, and its verdict logic."""

from __future__ import annotations

import pandas as pd

from vlmbench.world.quality import Bars, measure, verdicts


def test_measure_reports_clean_whitebox_and_transfer_per_dataset():
    table = measure(n_samples=12, batch_size=12)
    assert set(table["model"]) == {"world-vit", "world-rn"}
    assert len(table) == 2 * table["dataset"].nunique() and table["dataset"].nunique() >= 6
    assert ((0 <= table[["clean", "whitebox", "transfer"]]) & (table[["clean", "whitebox", "transfer"]] <= 100)).all().all()
    assert (table["whitebox"] <= table["clean"] + 100 / 12).all()  # white-box PGD never helps (up to one lucky image)


def test_verdicts_apply_each_bar():
    rows = pd.DataFrame(
        [
            {"model": "a", "dataset": "d1", "chance": 50.0, "clean": 90.0, "whitebox": 5.0, "transfer": 60.0},
            {"model": "a", "dataset": "d2", "chance": 25.0, "clean": 70.0, "whitebox": 3.0, "transfer": 50.0},
            {"model": "b", "dataset": "d1", "chance": 50.0, "clean": 60.0, "whitebox": 20.0, "transfer": 30.0},
            {"model": "b", "dataset": "d2", "chance": 25.0, "clean": 30.0, "whitebox": 0.0, "transfer": 10.0},
        ]
    )
    result = verdicts(rows, Bars()).set_index("model")
    assert result.loc["a"].drop(["mean_clean", "mean_whitebox", "mean_transfer"]).all()
    assert not result.loc["b", "every_dataset_above_chance_bar"]  # 60 < 1.5 × 50
    assert not result.loc["b", "mean_clean_bar"]  # mean 45 < 60
    assert not result.loc["b", "whitebox_bar"]  # mean 10 is not < 10
    assert not result.loc["b", "transfer_gap_bar"]  # 20 − 10 < 30
