"""Transfer attacks: crafted on a source model, evaluated on the target; the source is recorded."""

from __future__ import annotations

from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.protocol import Protocol


def test_cross_architecture_transfer_gap_on_the_world(tmp_path):
    common = ["run", "--model", "world-vit", "--dataset", "world-colour,world-texture", "--samples", "40",
              "--attack", "pgd-10", "--eps", "4/255", "--threads", "1"]
    runner = CliRunner()
    white = runner.invoke(app, [*common, "--output", str(tmp_path / "white")])
    transfer = runner.invoke(app, [*common, "--source-model", "world-rn", "--output", str(tmp_path / "transfer")])
    assert white.exit_code == 0 and transfer.exit_code == 0, transfer.output
    rows = results.load_results(tmp_path / "transfer")
    assert set(rows["track"]) == {"transfer"}
    protocol = Protocol.from_json(rows["protocol"].iloc[0])
    assert protocol.source is not None and protocol.source.name == "world-rn" and protocol.track == "transfer"
    white_robust = results.load_results(tmp_path / "white")["robust"].mean() * 100
    transfer_robust = rows["robust"].mean() * 100
    assert transfer_robust >= white_robust + 30, (white_robust, transfer_robust)
    assert (rows["linf"] <= 4 / 255 + 1e-6).all()


def test_unknown_source_model_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["run", "--source-model", "world-rnn", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "did you mean 'world-rn'" in result.output
