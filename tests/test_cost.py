"""Inference-cost accounting: image-encoder passes are counted on the encoders themselves, so a defense
holding the classifier in a closure is counted, and an uncountable pipeline is an error, not a 0."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.cost import CostError, encoder_of, inference_cost
from vlmbench.defense import DefenseContext
from vlmbench.models import ClipModel, Preprocess
from vlmbench.registry import plugins

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


class FakeClip(torch.nn.Module):
    """A CLIP-shaped module on (N,3,2,2) images: a linear ``visual`` tower to 12 dimensions."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.visual = torch.nn.Linear(12, 12)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x.flatten(1))


def _model(seed: int = 0) -> ClipModel:
    preprocess = Preprocess((2, 2), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    module = FakeClip(seed).requires_grad_(False)
    return ClipModel(f"fake-{seed}", module, None, preprocess, f"{seed:016d}")  # type: ignore[arg-type]


def _classifier(model: ClipModel) -> ZeroShotClassifier:
    return ZeroShotClassifier(model, torch.nn.functional.normalize(torch.randn(4, 12), dim=1))


def _passes(cost: dict[str, float]) -> tuple[float, float]:
    return cost["infer_forward_passes"], cost["infer_backward_passes"]


def test_encoder_of_is_the_visual_tower():
    model = _model()
    assert encoder_of(model) is model.module.visual
    bare = ClipModel("bare", torch.nn.Linear(1, 1), None, model.preprocess, "0" * 16)  # type: ignore[arg-type]
    with pytest.raises(CostError, match="model 'bare' has no image tower"):
        encoder_of(bare)


def test_the_closure_defense_of_the_docs_counts_one_forward_pass_per_image(tmp_path):
    source = tmp_path / "my_defense.py"
    source.write_text(re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)[0])
    plugins().load_source(str(source))
    model = _model()
    classifier = _classifier(model)
    defended = plugins().defenses.get("my_defense")().wrap(classifier, DefenseContext(tmp_path, torch.device("cpu"), 0))
    assert not any(m is model.module.visual for m in defended.modules())  # invisible to pipeline.modules()
    x = torch.rand(3, 3, 2, 2)
    assert _passes(inference_cost(defended, classifier, x, 0, encoders=[encoder_of(model)])) == (1, 0)
    assert _passes(inference_cost(defended, classifier, x, 0)) == (1, 0)  # found through the undefended classifier


@pytest.mark.parametrize(("name", "passes"), [("ttc", (5, 2)), ("scc", (14, 4))])
def test_counterattack_defenses_count_their_forward_and_backward_passes(name, passes, tmp_path):
    model = _model()
    classifier = _classifier(model)
    defended = plugins().defenses.get(name)().wrap(classifier, DefenseContext(tmp_path, torch.device("cpu"), 0))
    cost = inference_cost(defended, classifier, torch.rand(2, 3, 2, 2), 0, encoders=[encoder_of(model)], defense=name)
    assert _passes(cost) == passes  # TTC: f(x), f(x+δ₀), 2 steps, the classification; SCC: see test_test_time_defenses


def test_towers_given_and_found_are_each_counted_once(tmp_path):
    """A closure using a second model's tower: counted when given, never twice when also found."""
    model, original = _model(0), _model(1)
    classifier = _classifier(model)

    class TwoEncoders(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier  # found inside the pipeline as well as given

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            original.module.encode_image(x)  # held in a closure: only counted when given
            return self.classifier(x)

    x = torch.rand(2, 3, 2, 2)
    towers = [encoder_of(model), encoder_of(original), encoder_of(model)]
    assert _passes(inference_cost(TwoEncoders(), classifier, x, 0, encoders=towers)) == (2, 0)


def test_a_pipeline_that_runs_no_given_encoder_is_an_error():
    model = _model()
    classifier = _classifier(model)
    constant = torch.nn.Linear(12, 4)  # logits straight from the pixels: no image-encoder pass at all

    class Blind(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return constant(x.flatten(1))

    with pytest.raises(CostError) as info:
        inference_cost(Blind(), classifier, torch.rand(2, 3, 2, 2), 0, encoders=[encoder_of(model)], defense="blind")
    message = str(info.value)
    assert message.startswith("could not count the image-encoder passes of defense 'blind': ") and "\n" not in message


def test_the_counter_must_count_one_forward_pass_per_image_of_the_undefended_classifier():
    model = _model()
    classifier = _classifier(model)

    class Twice(torch.nn.Module):  # an "undefended" classifier that runs its tower twice per image
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            classifier(x)
            return classifier(x)

    with pytest.raises(CostError, match="undefended classifier counted 2 forward passes per image instead of 1"):
        inference_cost(classifier, Twice(), torch.rand(2, 3, 2, 2), 0, encoders=[encoder_of(model)], defense="none")


def test_a_pipeline_without_test_time_part_is_measured_once(monkeypatch):
    """``defended is undefended``: one counted prediction and one set of timed repeats, not two."""
    from vlmbench import cost

    model = _model()
    classifier = _classifier(model)
    calls = []
    classifier.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    ticks = iter(range(100))
    monkeypatch.setattr(cost.time, "perf_counter", lambda: float(next(ticks)) ** 2)  # every timing differs
    measured = inference_cost(classifier, classifier, torch.rand(3, 3, 2, 2), 0, encoders=[encoder_of(model)], repeats=3)
    assert calls == [3] * 4  # the counted prediction, then 3 timed ones
    assert _passes(measured) == (1, 0)
    assert measured["infer_time_s"] == measured["infer_time_s_undefended"] == 1 / 3  # fastest: (1² − 0²) / 3 images


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_timing_waits_for_cuda_kernels(monkeypatch):
    from vlmbench import cost

    synced = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (synced.append(device), real(device)))
    x = torch.rand(2, 3, 2, 2, device="cuda")
    cost._seconds_per_image(torch.nn.Identity(), x, repeats=2)
    assert len(synced) == 4 and all(torch.device(d) == x.device for d in synced)
