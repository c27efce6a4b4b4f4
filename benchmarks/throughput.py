"""Attack throughput, FLOP/s and MFU: vlmbench's attacks against the loops research scripts use.

For every (model, attack, precision) two paths attack the same images, interleaved in ``--rounds``
rounds (the best round of each kept): ``vlmbench``, the attack plugin (``pgd-10``, ``cw-10``,
``apgd-ce-100``, ``aa``) on its ``ZeroShotClassifier`` (frozen weights, input gradients only, cached
class texts) under ``vlmbench.precision.running_in``, every step taken (no early stop); and the
baseline, in the same precision context: for pgd/cw the textbook ``reference loop`` (weights
trainable, ``loss.backward()`` on the images, ``model.zero_grad()``, class texts of the first template
encoded on every forward), for apgd-ce/aa ``pyautoattack`` called directly on a plain
``forward(images) -> logits`` of the trainable module (texts of every template encoded once and
averaged per class, as vlmbench does). Rows ``pgd-10+ES`` (world models, trained weights, the
dataset's labels) time vlmbench with ``early_stop=True`` against vlmbench without it, when the
checkout's PGD takes ``early_stop`` (branch ``early-stop``; skipped, with a note, where it does not).

    CPU:  HF_HUB_OFFLINE=1 uv run python benchmarks/throughput.py --device cpu --threads 1
    GPU:  HF_HUB_OFFLINE=1 uv run python benchmarks/throughput.py --device cuda --json throughput.json

Conventions:
* ViT-B-32, ViT-B-16, RN50: open_clip architectures with RANDOM-INIT weights (nothing is downloaded;
  throughput does not depend on weight values), random uniform 224x224 images, classes ``class 0`` ..
  ``class 9``, template ``a photo of a {}.``. world-vit, world-rn: trained, on world-shape test images
  (32x32; repeated when more than its 504 are asked for).
* Labels: the model's own clean fp32 predictions, so every image starts correctly classified and
  every attack does its full work (AutoAttack skips misclassified images).
* FLOPs: ``FlopCounterMode`` on one batch-1 forward of the classifier, its input requiring grad as
  in an attack (without grad ``nn.MultiheadAttention`` runs a fused kernel the counter misses: a third
  of ViT-B-32 uncounted). A backward pass to the input (no weight gradients) counts as one forward's
  FLOPs (each matmul's input gradient costs about what its forward did): TFLOP/s = img/s x (forward +
  backward passes per image, as vlmbench's pass counter saw them) x FLOPs per forward.
* MFU = TFLOP/s / dense peak of the precision: ``--peak-tflops``, else by GPU name: H100/H200 bf16
  989, tf32 494, fp32 67; A100 bf16 312, tf32 156, fp32 19.5; else (and on the CPU) blank.
* Peak MiB (CUDA only): ``max_memory_allocated`` over one pass of a path over all images, both model
  copies (frozen, trainable) resident.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch.utils.flop_counter import FlopCounterMode

from vlmbench.attack import Attack
from vlmbench.batch import _PassCounter
from vlmbench.classifier import ZeroShotClassifier, class_text_embeddings, resize_and_normalize
from vlmbench.cost import PassCount
from vlmbench.execute import use_fp32
from vlmbench.models import ClipModel, Preprocess, freeze, parameter_fingerprint, preprocess_of, sequence_first_attention
from vlmbench.names import parse_attack_name
from vlmbench.precision import hardware_name, running_in
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins

WORLD = ("world-vit", "world-rn")
EPS = "4/255"
PEAKS: dict[tuple[str, ...], dict[str, float]] = {
    ("H100", "H200"): {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    ("A100",): {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
Batches = list[tuple[torch.Tensor, torch.Tensor]]
Runner = Callable[[Batches], PassCount | None]


def random_init_model(arch: str, device: torch.device) -> ClipModel:
    """An open_clip architecture with random weights (seed 0), loaded as vlmbench's ``OpenClipModel`` would."""
    torch.manual_seed(0)
    module = freeze(open_clip.create_model(arch, pretrained=None)).to(device)
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipModel(f"{arch}:random-init", module, tokenizer, preprocess_of(module), parameter_fingerprint(module))


class Workload:
    """One model with its images, labels, zero-shot classifier and trainable copy for the baselines."""

    def __init__(self, name: str, device: torch.device, images: int, batch_size: int) -> None:
        self.name = name
        self.y_true: torch.Tensor | None = None
        if name in WORLD:
            self.model = plugins().models.get(name).load(device)
            data = plugins().datasets.get("world-shape").load(None, "test")
            items = [data[i % len(data)] for i in range(images)]  # repeated past the split's 504 images
            self.x = torch.stack([image for image, _ in items]).to(device)
            self.y_true = torch.tensor([label for _, label in items], device=device)
            classnames, templates = list(data.classnames), list(data.templates)
        else:
            self.model = random_init_model(name, device)
            self.x = torch.rand((images, 3, 224, 224), generator=torch.Generator().manual_seed(0)).to(device)
            classnames, templates = [f"class {i}" for i in range(10)], ["a photo of a {}."]
        embeddings = class_text_embeddings(self.model, classnames, templates, disk_cache=False)
        self.classifier = ZeroShotClassifier(self.model, embeddings, templates).to(device)
        self.num_classes = len(classnames)
        self.batch_size = batch_size
        with torch.no_grad():
            self.y_clean = torch.cat([self.classifier(xb).argmax(1) for xb in self.x.split(batch_size)])
        with FlopCounterMode(display=False) as flops:  # with grad, as attacks run it (see the module docstring)
            self.classifier(self.x[:1].clone().requires_grad_(True))
        self.gflop = flops.get_total_flops() / 1e9
        self.trainable = copy.deepcopy(self.model.module).requires_grad_(True)  # the research scripts' model:
        sequence_first_attention(self.trainable, enabled=False)  # trainable, in open_clip's own batch-first build
        self.tokens = self.model.tokenizer([templates[0].format(c) for c in classnames]).to(device)  # reference loop
        every_prompt = self.model.tokenizer([t.format(c) for c in classnames for t in templates]).to(device)
        self.plain = PlainLogits(self.trainable, every_prompt, self.num_classes, self.model.preprocess)  # pyautoattack

    def batches(self, labels: torch.Tensor) -> Batches:
        return list(zip(self.x.split(self.batch_size), labels.split(self.batch_size)))


def reference_pgd(model: torch.nn.Module, tokens: torch.Tensor, preprocess: Preprocess, x: torch.Tensor,
                  y: torch.Tensor, eps: float, alpha: float, steps: int, generator: torch.Generator,
                  margin: bool = False) -> torch.Tensor:
    """The straightforward loop: full autograd through trainable weights, texts encoded every step;
    ``margin``: the CW loss −ReLU(z_y − max_{j≠y} z_j + 50) instead of the cross-entropy."""
    def logits(images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(model.encode_image(resize_and_normalize(images, preprocess)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        return (model.logit_scale.exp() * image @ text.T).float()

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        if not margin:
            return F.cross_entropy(z, y)
        true = z.gather(1, y[:, None]).squeeze(1)
        others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(dim=1)
        return -F.relu(true - others + 50.0).sum()

    x_adv = (x + (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = loss_fn(logits(x_adv))
        model.zero_grad()
        loss.backward()
        x_adv = torch.min(torch.max(x_adv + alpha * x_adv.grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


class PlainLogits(torch.nn.Module):
    """``forward(images) -> logits`` of a (trainable) open_clip module; the class texts (``tokens``: every
    template of class 0, then of class 1, ...) encoded once and averaged per class, as CLIP's zero-shot recipe."""

    def __init__(self, module: torch.nn.Module, tokens: torch.Tensor, classes: int, preprocess: Preprocess) -> None:
        super().__init__()
        self.module, self.preprocess, self.passes = module, preprocess, PassCount()  # counted to compare work
        with torch.no_grad():
            text = F.normalize(module.encode_text(tokens).float(), dim=-1)
            self.text = F.normalize(text.view(classes, -1, text.shape[-1]).mean(dim=1), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.module.encode_image(resize_and_normalize(images, self.preprocess)), dim=-1)
        logits = (self.module.logit_scale.exp() * image @ self.text.T).float()
        self.passes.record(len(images), logits)
        return logits


def reference_autoattack(forward: torch.nn.Module, name: str, steps: int, eps: float, num_classes: int,
                         device: torch.device) -> AutoAttack:
    """pyautoattack as a research script configures it: ``standard`` for aa, ``custom`` APGD-CE with
    one restart for apgd-ce; ``steps`` APGD/FAB iterations (Square 50 queries per step), min(9, C−1) targets."""
    standard = name == "aa"
    aa = AutoAttack(forward, norm="Linf", eps=eps, seed=0, device=device, version="standard" if standard else "custom",
                    attacks=None if standard else ["apgd-ce"])
    targets = min(9, num_classes - 1)
    common: dict[str, Any] = {"n_iter": steps, "norm": "Linf", "n_restarts": 1, "eps": eps, "seed": 0,
                              "device": device, "logger": aa.logger}
    aa.apgd = APGDAttack(forward, loss="ce", **common)
    aa.apgd_targeted = APGDAttack_targeted(forward, n_target_classes=targets, **common)
    aa.fab.n_iter, aa.fab.n_target_classes, aa.square.n_queries = steps, targets, 50 * steps
    return aa


def attack_choice(spec: str) -> tuple[type[Attack], ThreatModel, str]:
    """The plugin class, ℓ∞ threat model at ε = 4/255 and base name, as ``vlmbench.plan._resolve_attack``
    builds them (a step size the attack does not take is recorded as 0)."""
    registry = plugins().attacks
    name, steps = parse_attack_name(spec, registry.names())
    if name not in ("pgd", "cw", "apgd-ce", "aa"):
        raise SystemExit(f"attack {spec!r}: this benchmark has baselines for pgd, cw, apgd-ce and aa only")
    cls: type[Attack] = registry.get(name)
    steps = cls.default_steps if steps is None else steps
    return cls, ThreatModel.build("linf", EPS, steps, None if "step_size" in cls.honours else 0.0), name


def vlmbench_path(w: Workload, cls: type[Attack], threat: ThreatModel, device: torch.device,
                  early_stop: bool = False) -> Runner:
    def run(batches: Batches) -> PassCount:
        counter = _PassCounter(w.classifier)
        for xb, yb in batches:
            attack = cls(threat, early_stop=True) if early_stop else cls(threat)  # type: ignore[call-arg]
            attack.perturb(counter, xb, yb, torch.Generator(device=device).manual_seed(0))
        return counter.passes
    return run


def baseline_path(w: Workload, name: str, threat: ThreatModel, device: torch.device) -> Runner:
    def run(batches: Batches) -> PassCount | None:
        if name in ("pgd", "cw"):
            for xb, yb in batches:
                reference_pgd(w.trainable, w.tokens, w.model.preprocess, xb, yb, threat.eps, threat.step_size,
                              threat.steps, torch.Generator(device=device).manual_seed(0), margin=name == "cw")
            w.trainable.zero_grad(set_to_none=True)
            return None
        w.plain.passes = PassCount()
        for xb, yb in batches:
            aa = reference_autoattack(w.plain, name, threat.steps, threat.eps, w.num_classes, device)
            aa.run_standard_evaluation(xb, yb, batch_size=len(xb))
        return w.plain.passes
    return run


def timed(fn: Runner, batches: Batches, device: torch.device) -> tuple[float, float | None, PassCount | None]:
    """Seconds, peak CUDA memory (MiB; None on the CPU) and result of ``fn(batches)``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fn(batches)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None, result


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    found = (peaks[precision] for keys, peaks in PEAKS.items() if gpu and any(k in gpu for k in keys))
    return override if override is not None else next(found, None)


def measure(w: Workload, attack: str, precision: str, baseline: str, ours: Runner, theirs: Runner, batches: Batches,
            rounds: int, device: torch.device, override: float | None) -> dict[str, Any]:
    """Time ``ours`` (vlmbench) and ``theirs`` (the baseline) over ``batches``, interleaved; one table row."""
    best = {"ours": float("inf"), "theirs": float("inf")}
    peak: dict[str, float | None] = {"ours": None, "theirs": None}
    passes: dict[str, PassCount | None] = {"ours": None, "theirs": None}
    with running_in(precision, device):
        if device.type == "cuda":  # kernels loaded, cuBLAS/cuDNN handles created before the clock runs
            for fn in (ours, theirs):
                fn([(xb[:2], yb[:2]) for xb, yb in batches[:1]])
        for _ in range(rounds):
            for key, fn in (("ours", ours), ("theirs", theirs)):
                seconds, mib, result = timed(fn, batches, device)
                best[key] = min(best[key], seconds)
                peak[key] = None if mib is None else max(peak[key] or 0.0, mib)
                passes[key] = result
    n = len(w.x)
    per_image = {key: None if p is None else (p.forward / n, p.backward / n) for key, p in passes.items()}
    forward, backward = per_image["ours"] or (0.0, 0.0)
    tflops = n / best["ours"] * (forward + backward) * w.gflop / 1e3
    peak_tf = peak_tflops(device, precision, override)
    return {"model": w.name, "attack": attack, "precision": precision, "baseline": baseline, "images": n,
            "labels": "dataset" if attack.endswith("+ES") else "clean predictions",
            "vlmbench_img_s": n / best["ours"], "baseline_img_s": n / best["theirs"],
            "speedup": best["theirs"] / best["ours"], "vlmbench_s": best["ours"], "baseline_s": best["theirs"],
            "forward_per_image": forward, "backward_per_image": backward, "gflop_per_forward": w.gflop,
            "achieved_tflops": tflops, "peak_tflops": peak_tf,
            "mfu_percent": 100 * tflops / peak_tf if peak_tf else None,
            "baseline_passes_per_image": per_image["theirs"],  # forward, backward (pyautoattack, vlmbench full)
            "vlmbench_peak_mib": peak["ours"], "baseline_peak_mib": peak["theirs"]}


COLUMNS = [  # title, width, row key, format ("s": text, left-aligned)
    ("model", 10, "model", "s"), ("attack", 12, "attack", "s"), ("prec", 5, "precision", "s"),
    ("baseline", 14, "baseline", "s"), ("vlmb img/s", 11, "vlmbench_img_s", ".4g"),
    ("base img/s", 11, "baseline_img_s", ".4g"), ("speed-up", 9, "speedup", ".2f"),
    ("fwd/img", 8, "forward_per_image", ".1f"), ("bwd/img", 8, "backward_per_image", ".1f"),
    ("GFLOP/fwd", 10, "gflop_per_forward", ".3g"), ("TFLOP/s", 9, "achieved_tflops", ".3g"),
    ("MFU %", 7, "mfu_percent", ".1f"), ("vlmb MiB", 9, "vlmbench_peak_mib", ".0f"),
    ("base MiB", 9, "baseline_peak_mib", ".0f")]


def table_line(row: dict[str, Any] | None) -> str:
    """The column titles (``row=None``) or one row, fixed width; None values blank."""
    cells = []
    for title, width, key, fmt in COLUMNS:
        value = title if row is None else row[key]
        text = "" if value is None else value if isinstance(value, str) else format(value, fmt)
        cells.append(text.ljust(width) if fmt == "s" else text.rjust(width))
    return " ".join(cells)


DEFAULTS = {"cpu": {"models": "world-vit,world-rn,ViT-B-32", "attacks": "pgd-10,cw-10", "precisions": "fp32,bf16",
                    "batch_size": 32, "rounds": 2},
            "cuda": {"models": "ViT-B-32,ViT-B-16,RN50,world-vit,world-rn", "attacks": "pgd-10,cw-10,apgd-ce-100,aa",
                     "precisions": "fp32,tf32,bf16", "batch_size": 256, "rounds": 3}}
NOTES = ["224px models (ViT-B-32, ViT-B-16, RN50): RANDOM-INIT weights, random images (throughput does not "
         "depend on weight values); labels: each model's own clean predictions (all start correctly classified)",
         "TFLOP/s = vlmb img/s x (fwd + bwd per image) x FLOPs of one classifier forward; an input-gradient "
         "backward counts as one forward's FLOPs",
         "MFU peaks (dense TFLOP/s): H100/H200 bf16 989, tf32 494, fp32 67; A100 bf16 312, tf32 156, fp32 19.5, "
         "or --peak-tflops; MiB: CUDA max_memory_allocated, both model copies resident"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", help="comma list; defaults: " + " / ".join(d["models"] for d in DEFAULTS.values()))
    parser.add_argument("--attacks", help="comma list of pgd-N, cw-N, apgd-ce-N, aa(-N)")
    parser.add_argument("--precisions", help="comma list of fp32, tf32 (CUDA only), bf16")
    parser.add_argument("--images", type=int, help="per model (CPU: 32 world, 4 at 224px; CUDA: 1024)")
    parser.add_argument("--batch-size", type=int, help="CPU 32, CUDA 256")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds, the best of each kept (CPU 2, CUDA 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("throughput.json"))
    parser.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: by GPU name)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = DEFAULTS[device.type]
    models, attacks, precisions = ((getattr(args, key) or defaults[key]).split(",")
                                   for key in ("models", "attacks", "precisions"))
    if not cuda and "tf32" in precisions:
        print("tf32 skipped: it exists only on CUDA")
        precisions.remove("tf32")
    batch_size, rounds = args.batch_size or defaults["batch_size"], args.rounds or defaults["rounds"]
    images = {m: args.images or (1024 if cuda else 32 if m in WORLD else 4) for m in models}
    choices = {spec: attack_choice(spec) for spec in attacks}
    use_fp32()  # TF32 off unless a tf32 row switches it on
    stop_early = "pgd-10" in choices and "early_stop" in choices["pgd-10"][0].honours
    notes = NOTES + (["pgd-10+ES: vlmbench early_stop=True (vlmb) vs vlmbench full (base), trained world models, "
                      "dataset labels"] if stop_early else
                     ["pgd-10+ES rows skipped: this checkout's PGD takes no early_stop"] if "pgd-10" in choices else [])
    header = {"device": hardware_name(device), "device_type": device.type, "torch": torch.__version__,
              "open_clip": open_clip.__version__, "threads": torch.get_num_threads(), "images": images,
              "batch_size": batch_size, "rounds": rounds, "threat": f"linf eps={EPS}",
              "random_init_models": [m for m in models if m not in WORLD], "notes": notes}
    print(f"device {header['device']} ({device.type}), torch {torch.__version__}, open_clip {open_clip.__version__}, "
          f"{header['threads']} thread(s), batch {batch_size}, {rounds} round(s), linf eps {EPS}")
    print("images: " + ", ".join(f"{m} {n}" for m, n in images.items()))
    for note in notes:
        print(f"  * {note}")
    print(table_line(None), flush=True)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(table_line(row), flush=True)
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")  # after every row

    for model in models:
        w = Workload(model, device, images[model], batch_size)
        for spec, (cls, threat, name) in choices.items():
            baseline = "reference loop" if name in ("pgd", "cw") else "pyautoattack"
            for precision in precisions:
                emit(measure(w, spec, precision, baseline, vlmbench_path(w, cls, threat, device),
                             baseline_path(w, name, threat, device), w.batches(w.y_clean), rounds, device,
                             args.peak_tflops))
        if w.y_true is not None and stop_early:
            cls, threat, _ = choices["pgd-10"]
            for precision in precisions:
                emit(measure(w, "pgd-10+ES", precision, "vlmbench full", vlmbench_path(w, cls, threat, device, True),
                             vlmbench_path(w, cls, threat, device), w.batches(w.y_true), rounds, device,
                             args.peak_tflops))
        del w
        if cuda:
            torch.cuda.empty_cache()
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
