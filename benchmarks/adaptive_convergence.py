"""Has the adaptive track's attack budget converged? Robust accuracy of TTC/SCC over a grid of PGD budgets.

For each defense, ε and dataset (world-rn, ε = 4/255, world-shape + world-colour by default) the
adaptive attack of ``vlmbench run`` is rebuilt from vlmbench's own pieces — the runner's plan (data,
indices, attack choice), the zero-shot classifier wrapped by the defense's test-time module, and the
registry's PGD with EOT over the defense's randomness and BPDA through its counterattack — and run
over a grid of budgets ``STEPSxEOT``. As on the adaptive track, PGD starts from the oblivious attack's
result (PGD on the classifier without the defense; here always ``--start-steps`` steps, while the runner
uses the cell's steps: on the undefended classifier PGD-10 already leaves 0% at 4/255).

Scoring (independent of the runner): every clean and adversarial image is classified by
``--eval-draws`` independent forward draws of the defended model, draw k seeded alike for the clean
and the adversarial batch. An image is robust when it is correct clean and attacked under

* **majority**: the most frequent prediction over the draws (ties: higher mean probability);
* **single**: the first draw alone (what a one-draw runner reports);
* **mean**: averaged per draw (clean_k and adversarial_k both correct), i.e. the expected single draw.

Two attack outputs are scored per budget: the **last** PGD iterate (what ``attacks/pgd.py`` returns)
and, as a prototype of a cheaper fix, the **best** iterate: at every step PGD already evaluates the
defended model EOT times on the current iterate; the iterate whose EOT draws voted least often for the
true class (ties: higher mean cross-entropy) is kept and then re-scored with fresh draws like the last
one — a lucky draw during the attack does not count as a break.

Budgets with the same step size share one PGD run: PGD-S from a start equals PGD-s continued for S − s
steps (the defense's draws come from torch's global generator, whose state is kept with the run), so
steps 10, 20, 40, 80 cost one 80-step run. Step size: ``default`` (vlmbench's rule
``min(ε, max(1/255, 2.5ε/steps))``, i.e. 1/255 here), ``1/255``, ``madry`` (2.5ε/steps) or a schedule
``sched:2/1/0.5/0.25`` (α in 1/255, each for an equal share of the steps). ``--reference`` adds a plain
BPDA/EOT PGD written outside vlmbench's attack (random start, 40 steps, EOT 10, α 1/255);
``--scoring-noise K`` re-scores stored results with K other sets of draws. Finished runs, checkpoints and
scores are kept in ``--output`` (rerun to resume or to extend the grid).

    uv run python benchmarks/adaptive_convergence.py --defenses ttc,scc --samples 40 --threads 1
    uv run python benchmarks/adaptive_convergence.py --defenses ttc --reference   # + the plain BPDA/EOT attack
    uv run python benchmarks/adaptive_convergence.py --defenses scc --datasets world-colour --no-grid --scoring-noise 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.paths import cache_dir
from vlmbench.defense import DefenseContext
from vlmbench.protocol import default_step_size, parse_eps
from vlmbench.plan import AttackChoice, RunRequest, plan

DEFAULT_GRID = "10x10,20x10,40x10,80x10,10x20,20x20,40x20,10x40,20x40"


@dataclass
class Setup:
    """One (defense, dataset): clean images, labels, the classifier and the defended pipeline."""

    defense: str
    dataset: str
    x: torch.Tensor
    y: torch.Tensor
    classifier: torch.nn.Module
    defended: torch.nn.Module
    attack: AttackChoice  # the runner's attack choice (threat of the plan's ε and steps)


def build_setups(args: argparse.Namespace, defense: str) -> list[Setup]:
    """The runner's plan for ``defense``; classifier and defended module built as ``runner.execute`` does."""
    request = RunRequest(models=(args.model,), defenses=(defense,), attacks=("pgd-10",),
                         datasets=tuple(args.datasets.split(",")), eps=(args.eps,), n_samples=args.samples,
                         seed=args.seed, device="cpu")
    planned = plan(request)
    choice = planned.defenses[0]
    original = planned.models[0].load(planned.device)
    context = DefenseContext(cache_dir() / "defenses", planned.device, request.seed, request.data_root, original)
    model = original
    for part in choice.parts:
        model = part.adapt_model(model, context)
    setups = []
    for plugin, dataset, indices in planned.datasets:
        classifier = ZeroShotClassifier.build(model, dataset.classnames, dataset.templates).to(planned.device)
        defended: torch.nn.Module = classifier
        for part in choice.parts:
            defended = part.wrap(defended, context)  # type: ignore[arg-type]
        items = [dataset[i] for i in indices]
        x = torch.stack([img for img, _ in items]).float()
        y = torch.tensor([label for _, label in items], dtype=torch.long)
        setups.append(Setup(defense, plugin.name, x, y, classifier, defended, planned.attacks[0]))
    return setups


def seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def step_size(rule: str, eps: float, steps: int) -> float:
    if rule == "default":
        return default_step_size("linf", eps, steps)
    if rule == "madry":
        return 2.5 * eps / steps
    return parse_eps(rule)[0]


# ----------------------------------------------------------------------------------------------- scoring

@torch.no_grad()
def draws(defended: torch.nn.Module, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Probabilities ``(n, N, C)`` of ``n`` independent forward draws; draw k seeded by ``seed + k``
    (so a clean and an adversarial batch get the same draws); torch's global generator is restored."""
    out = []
    with torch.random.fork_rng(devices=[]):
        for k in range(n):
            torch.manual_seed(seed + k)
            out.append(defended(x).softmax(dim=1))
    return torch.stack(out)


def correct(probs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: majority-vote correct (bool), first-draw correct (bool), per-draw correct ``(n, N)``."""
    n, _, classes = probs.shape
    predictions = probs.argmax(dim=2)
    votes = F.one_hot(predictions, classes).sum(dim=0).float()
    majority = (votes + 1e-3 * probs.mean(dim=0)).argmax(dim=1)  # ties: higher mean probability
    per_draw = predictions == y
    return {"majority": majority == y, "single": per_draw[0], "per_draw": per_draw}


def robust(clean: dict[str, torch.Tensor], adv: dict[str, torch.Tensor]) -> dict[str, list]:
    """Per-image robustness under the three scorings (JSON-ready lists)."""
    return {"majority": (clean["majority"] & adv["majority"]).tolist(),
            "single": (clean["single"] & adv["single"]).tolist(),
            "mean": (clean["per_draw"] & adv["per_draw"]).float().mean(dim=0).tolist()}


# ------------------------------------------------------------------------------------- the PGD run

class IterateRecorder(torch.nn.Module):
    """Passes calls through to the defended module; on every EOT batch of the attacked images it keeps,
    per image, the iterate whose draws voted least often for the true class (ties: higher mean CE)."""

    def __init__(self, inner: torch.nn.Module, y: torch.Tensor, best_x: torch.Tensor, best_key: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.y = inner, y
        self.best_x, self.best_key = best_x, best_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        n = len(self.y)
        if x.shape[0] % n == 0:
            self.observe(x[:n].detach(), logits.detach().view(-1, n, logits.shape[-1]))
        return logits

    def observe(self, iterate: torch.Tensor, logits: torch.Tensor) -> None:
        """``logits`` ``(draws, N, C)`` at ``iterate``; smaller key = stronger iterate."""
        key = iterate_key(logits, self.y)
        better = key < self.best_key
        self.best_key[better] = key[better]
        self.best_x[better] = iterate[better]


def iterate_key(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class votes over the draws, minus a tie-breaker in (0, 1): the mean cross-entropy, squashed."""
    draws_, n, classes = logits.shape
    votes = (logits.argmax(dim=2) == y).sum(dim=0).float()
    ce = F.cross_entropy(logits.reshape(-1, classes), y.repeat(draws_), reduction="none").view(draws_, n).mean(dim=0)
    return votes - torch.tanh(ce) * 0.999


@dataclass
class Chain:
    """State of one PGD run (one setup, EOT, step size, seed) that can be continued."""

    steps: int
    x_last: torch.Tensor
    best_x: torch.Tensor
    best_key: torch.Tensor
    rng: torch.Tensor  # torch's global generator state after the last step
    time_s: float  # attack seconds so far (oblivious start included)


def start_chain(setup: Setup, threat_steps: int, seed: int) -> Chain:
    """The oblivious start, as the runner computes it: PGD on the classifier without the defense."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    threat = replace(setup.attack.threat, steps=threat_steps,
                     step_size=default_step_size("linf", setup.attack.threat.eps, threat_steps))
    started = time.perf_counter()
    x0 = replace(setup.attack, threat=threat).build().perturb(setup.classifier, setup.x, setup.y, generator).detach()
    elapsed = time.perf_counter() - started
    return Chain(0, x0, x0.clone(), torch.full((len(x0),), float("inf")), torch.get_rng_state(), elapsed)


def continue_chain(setup: Setup, chain: Chain, steps: int, eot: int, alpha: float) -> Chain:
    """``steps`` more steps of the registry's PGD (EOT ``eot``, step ``alpha``) from ``chain.x_last``."""
    torch.set_rng_state(chain.rng)
    generator = torch.Generator().manual_seed(0)  # unused: PGD draws nothing from it when given a start
    threat = replace(setup.attack.threat, steps=steps, step_size=alpha)
    attack = replace(setup.attack, threat=threat).build(eot)
    best_x, best_key = chain.best_x.clone(), chain.best_key.clone()
    recorder = IterateRecorder(setup.defended, setup.y, best_x, best_key)
    started = time.perf_counter()
    x_adv = attack.perturb(recorder, setup.x, setup.y, generator, start=chain.x_last).detach()
    elapsed = time.perf_counter() - started
    return Chain(chain.steps + steps, x_adv, best_x, best_key, torch.get_rng_state(), chain.time_s + elapsed)


def best_with_last(setup: Setup, chain: Chain, eot: int) -> torch.Tensor:
    """The best iterate including the last one (evaluated by ``eot`` draws, global generator restored)."""
    best_x, best_key = chain.best_x.clone(), chain.best_key.clone()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.set_rng_state(chain.rng)
        logits = setup.defended(chain.x_last.repeat(eot, 1, 1, 1)).view(eot, len(setup.y), -1)
    IterateRecorder(setup.defended, setup.y, best_x, best_key).observe(chain.x_last, logits)
    return best_x


# ------------------------------------------------------------------------------------- the plain reference

def reference_attack(defended: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
                     eot: int = 10, alpha: float = 1 / 255, seed: int = 0) -> torch.Tensor:
    """PGD written as research code would, outside vlmbench's attack: random start in the ℓ∞ ball, ``steps``
    sign steps of size ``alpha`` on the cross-entropy summed over ``eot`` independent forward draws of the
    defended module (whose forward adds the counterattack as a constant: BPDA, identity surrogate)."""
    torch.manual_seed(seed)
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = sum(F.cross_entropy(defended(x + delta), y, reduction="sum") for _ in range(eot))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


# ------------------------------------------------------------------------------------- storage and driver

class Store:
    """``points.json``: scores per finished grid point; ``chains/*.pt``: continuable PGD runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "chains").mkdir(parents=True, exist_ok=True)
        self.path = folder / "points.json"
        self.points: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, key: str, value: dict) -> None:
        self.points[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.points, indent=1))
        tmp.replace(self.path)

    def chain_path(self, key: str) -> Path:
        return self.folder / "chains" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def load_chain(self, key: str) -> Chain | None:
        path = self.chain_path(key)
        return Chain(**torch.load(path)) if path.exists() else None

    def save_chain(self, key: str, chain: Chain) -> None:
        path = self.chain_path(key)
        torch.save(vars(chain), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)


def log(args: argparse.Namespace, message: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    if args.log:
        with open(args.log, "a") as handle:
            handle.write(line + "\n")


def parse_grid(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]  # type: ignore[misc]


@dataclass(frozen=True)
class Run:
    """One PGD run on every setup: EOT, and either one step size α (scored at each of ``wanted`` steps:
    budgets of one α share the run) or a step-size schedule (``wanted`` holds its single budget)."""

    eot: int
    rules: tuple[str, ...]
    wanted: tuple[int, ...]
    alpha: float | None = None
    schedule: tuple[float, ...] | None = None  # α per equal share of the steps

    @property
    def tag(self) -> str:
        if self.schedule is None:
            return f"eot{self.eot}|alpha{self.alpha:.8f}"
        return f"eot{self.eot}|sched{','.join(f'{a:.8f}' for a in self.schedule)}|S{self.wanted[0]}"

    def segments(self, steps: int) -> list[tuple[int, float]]:
        """``(end step, α)`` pieces of a ``steps``-step run."""
        if self.schedule is None:
            return [(steps, self.alpha)]  # type: ignore[list-item]
        k = len(self.schedule)
        ends = [round(steps * (i + 1) / k) for i in range(k)]
        return list(zip(ends, self.schedule))


def grid_runs(args: argparse.Namespace, eps: float) -> list[Run]:
    """The PGD runs of the grid, cheapest first. Step rules: ``default``, ``madry``, a fixed size
    (``1/255``), or ``sched:A/B/...`` (α in 1/255 units, each for an equal share of the steps)."""
    constant: dict[tuple[int, float], tuple[list[str], list[int]]] = {}
    runs = []
    for steps, eot in parse_grid(args.grid):
        for rule in args.step_rules.split(","):
            if rule.startswith("sched:"):
                schedule = tuple(float(v) / 255 for v in rule[len("sched:"):].split(";" if ";" in rule else "/"))
                runs.append(Run(eot, (rule,), (steps,), schedule=schedule))
                continue
            rules, wanted = constant.setdefault((eot, step_size(rule, eps, steps)), ([], []))
            rules.append(rule) if rule not in rules else None
            wanted.append(steps) if steps not in wanted else None
    runs += [Run(eot, tuple(rules), tuple(sorted(wanted)), alpha=alpha) for (eot, alpha), (rules, wanted) in constant.items()]
    return sorted(runs, key=lambda run: (run.eot * max(run.wanted), run.schedule is not None, run.tag))


def run_grid_point(args: argparse.Namespace, store: Store, setup: Setup, clean: dict[str, torch.Tensor], run: Run) -> None:
    """One PGD run on one setup, scored at each of its budgets (resumes from ``store``)."""
    eps = setup.attack.threat.eps
    base = f"{args.model}|{setup.defense}|{setup.dataset}|{args.eps}|n{args.samples}|seed{args.seed}|start{args.start_steps}"
    chain_key = f"{base}|{run.tag}"
    todo = sorted({s for s in run.wanted if f"{chain_key}|steps{s}" not in store.points})
    if not todo:
        return
    chain = store.load_chain(chain_key)
    if chain is None:
        chain = start_chain(setup, args.start_steps, seed_of(args.seed, setup.dataset, "start"))
        rng_tag = f"{run.alpha:.8f}" if run.schedule is None else run.tag
        torch.manual_seed(seed_of(args.seed, setup.dataset, setup.defense, run.eot, rng_tag))
        chain.rng = torch.get_rng_state()
    for target in todo:
        if chain.steps > target:
            raise SystemExit(f"{chain_key}: stored run is at {chain.steps} steps, past {target}; "
                             "remove its chain file to recompute")
        for end, alpha in run.segments(target):
            if chain.steps < end:
                chain = continue_chain(setup, chain, end - chain.steps, run.eot, alpha)
                store.save_chain(chain_key, chain)
        scoring_seed = seed_of(args.seed, setup.dataset, "score")
        last = robust(clean, correct(draws(setup.defended, chain.x_last, args.eval_draws, scoring_seed), setup.y))
        best_x = best_with_last(setup, chain, run.eot)
        best = robust(clean, correct(draws(setup.defended, best_x, args.eval_draws, scoring_seed), setup.y))
        for adv in (chain.x_last, best_x):
            assert float((adv - setup.x).abs().max()) <= eps + 1e-6 and 0 <= float(adv.min()) and float(adv.max()) <= 1
        alphas = run.schedule or (run.alpha,)
        point = {"defense": setup.defense, "dataset": setup.dataset, "steps": target, "eot": run.eot, "alpha": alphas[0],
                 "schedule": list(alphas) if run.schedule else None, "rules": list(run.rules), "seed": args.seed,
                 "n": len(setup.y), "time_s": chain.time_s, "last": last, "best": best}
        store.save(f"{chain_key}|steps{target}", point)
        log(args, f"{setup.defense} {setup.dataset} steps={target} eot={run.eot} "
                  f"alpha={'→'.join(f'{a * 255:.3g}' for a in alphas)}/255: "
                  f"robust majority last {100 * sum(last['majority']) / len(setup.y):.1f}% "
                  f"best {100 * sum(best['majority']) / len(setup.y):.1f}% "
                  f"single {100 * sum(last['single']) / len(setup.y):.1f}% ({chain.time_s:.0f} s)")


def run_reference(args: argparse.Namespace, store: Store, setup: Setup, clean: dict[str, torch.Tensor]) -> None:
    key = f"reference|{args.model}|{setup.defense}|{setup.dataset}|{args.eps}|n{args.samples}|seed{args.seed}"
    if key in store.points:
        return
    started = time.perf_counter()
    x_adv = reference_attack(setup.defended, setup.x, setup.y, setup.attack.threat.eps,
                             seed=seed_of(args.seed, setup.dataset, "reference"))
    elapsed = time.perf_counter() - started
    scored = robust(clean, correct(draws(setup.defended, x_adv, args.eval_draws, seed_of(args.seed, setup.dataset, "score")), setup.y))
    store.save(key, {"defense": setup.defense, "dataset": setup.dataset, "n": len(setup.y), "time_s": elapsed, "last": scored})
    log(args, f"reference {setup.defense} {setup.dataset}: robust majority {100 * sum(scored['majority']) / len(setup.y):.1f}% "
              f"single {100 * sum(scored['single']) / len(setup.y):.1f}% mean {100 * sum(scored['mean']) / len(setup.y):.1f}% "
              f"({elapsed:.0f} s)")


def scoring_noise(args: argparse.Namespace, store: Store, setup: Setup, clean: dict[str, torch.Tensor], seeds: int) -> None:
    """Re-score the last iterate of every stored run of ``setup`` with ``seeds`` other sets of draws (clean
    images re-scored alike): how many images change majority-vote robustness from scoring noise alone."""
    base = f"{args.model}|{setup.defense}|{setup.dataset}|{args.eps}|n{args.samples}|seed{args.seed}|start{args.start_steps}"
    for run in grid_runs(args, setup.attack.threat.eps):
        chain_key = f"{base}|{run.tag}"
        chain = store.load_chain(chain_key)
        point = store.points.get(f"{chain_key}|steps{chain.steps}") if chain is not None else None
        if point is None:
            continue
        stored = point["last"]["majority"]  # scored with the run's own --eval-draws
        scored = []
        for k in range(1, seeds + 1):
            other = seed_of(args.seed, setup.dataset, "score", k)
            scored.append(robust(correct(draws(setup.defended, setup.x, args.eval_draws, other), setup.y),
                                 correct(draws(setup.defended, chain.x_last, args.eval_draws, other), setup.y))["majority"])
        changed = [sum(a != b for a, b in zip(scored[0], other)) for other in scored[1:]]
        log(args, f"scoring noise {setup.defense} {setup.dataset} steps={chain.steps} {run.tag}: stored {sum(stored)} robust; "
                  f"{seeds} re-scorings with {args.eval_draws} draws: robust {[sum(r) for r in scored]}, images changed vs "
                  f"the stored scoring {[sum(a != b for a, b in zip(stored, r)) for r in scored]}, vs the first re-scoring {changed}")


# ------------------------------------------------------------------------------------- the table

def pooled(points: list[dict], output: str, scoring: str) -> tuple[float, list[float]]:
    """Robust % over all images of ``points`` (datasets of equal size: the unweighted mean) and per-image values."""
    values = [v for p in points for v in p[output][scoring]]
    return 100 * sum(values) / len(values), values


def table(args: argparse.Namespace, store: Store) -> str:
    grid = parse_grid(args.grid)
    lines = []
    for defense in args.defenses.split(","):
        lines += [f"**{defense}**, {args.model}, ε = {args.eps}, {args.samples} images × {args.datasets}, "
                  f"seed {args.seed}, {args.eval_draws}-draw scoring", "",
                  "| step rule | steps | EOT | α (/255) | robust % majority (last) | Δ 2×steps | Δ 2×EOT | images changed 2×steps / 2×EOT "
                  "| single-draw % | mean-over-draws % | mean Δ 2×steps / 2×EOT | best iterate % majority | Δ 2×steps | Δ 2×EOT "
                  "| s / image |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rule in args.step_rules.split(","):
            cells = {}
            for steps, eot in grid:
                alpha = None
                found = []
                for dataset in args.datasets.split(","):
                    for key, p in store.points.items():
                        if (not key.startswith("reference") and p["defense"] == defense and p["dataset"] == dataset
                                and p["steps"] == steps and p["eot"] == eot and p["seed"] == args.seed and p["n"] == args.samples
                                and f"|{args.model}|" in f"|{key}" and rule in p["rules"]):
                            found.append(p)
                            alpha = "→".join(f"{a * 255:.3g}" for a in (p.get("schedule") or [p["alpha"]]))
                            break
                if len(found) == len(args.datasets.split(",")):
                    cells[(steps, eot)] = (alpha, found)
            for steps, eot in grid:
                if (steps, eot) not in cells:
                    continue
                alpha, found = cells[(steps, eot)]
                acc, per = pooled(found, "last", "majority")
                best, best_per = pooled(found, "best", "majority")

                def delta(other: tuple[int, int], output: str, mine: list[float], scoring: str = "majority") -> tuple[str, str]:
                    if other not in cells:
                        return "—", "—"
                    value, theirs = pooled(cells[other][1], output, scoring)
                    mine_value = 100 * sum(mine) / len(mine)
                    changed = sum(a != b for a, b in zip(mine, theirs))
                    return f"{value - mine_value:+.1f}", str(changed)

                ds, cs = delta((2 * steps, eot), "last", per)
                de, ce = delta((steps, 2 * eot), "last", per)
                bds, _ = delta((2 * steps, eot), "best", best_per)
                bde, _ = delta((steps, 2 * eot), "best", best_per)
                mean, mean_per = pooled(found, "last", "mean")
                mds, _ = delta((2 * steps, eot), "last", mean_per, "mean")
                mde, _ = delta((steps, 2 * eot), "last", mean_per, "mean")
                seconds = sum(p["time_s"] for p in found) / sum(p["n"] for p in found)
                lines.append(f"| {rule} | {steps} | {eot} | {alpha} | {acc:.1f} | {ds} | {de} | {cs} / {ce} | "
                             f"{pooled(found, 'last', 'single')[0]:.1f} | {mean:.1f} | {mds} / {mde} | "
                             f"{best:.1f} | {bds} | {bde} | {seconds:.2f} |")
        refs = [p for k, p in store.points.items() if k.startswith(f"reference|{args.model}|{defense}|")
                and f"|n{args.samples}|seed{args.seed}" in k and p["dataset"] in args.datasets.split(",")]
        if len(refs) == len(args.datasets.split(",")):
            lines.append(f"| reference (plain loop, random start) | 40 | 10 | 1 | "
                         f"{pooled(refs, 'last', 'majority')[0]:.1f} | | | | {pooled(refs, 'last', 'single')[0]:.1f} | "
                         f"{pooled(refs, 'last', 'mean')[0]:.1f} | | | | | "
                         f"{sum(p['time_s'] for p in refs) / sum(p['n'] for p in refs):.2f} |")
        lines.append("")
    lines.append("Δ: robust % at twice the steps (same EOT) or twice the EOT draws (same steps) minus this row's; "
                 "images changed: images whose majority-vote robustness differs. Majority / single / mean: scoring of "
                 "each image by the majority of the draws, the first draw, or the mean over draws (clean and "
                 "adversarial scored alike). Best iterate: the iterate the attack's own EOT draws rated strongest, "
                 "re-scored with fresh draws. s / image: attack wall time (oblivious start included, scoring not), "
                 f"{torch.get_num_threads()} CPU thread(s).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world-rn")
    parser.add_argument("--defenses", default="ttc,scc")
    parser.add_argument("--datasets", default="world-shape,world-colour")
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="comma-separated STEPSxEOT budgets")
    parser.add_argument("--step-rules", default="default", help="comma-separated: default, madry, a fixed size like 1/255, or sched:2/1/0.5/0.25")
    parser.add_argument("--start-steps", type=int, default=10, help="steps of the oblivious start")
    parser.add_argument("--eval-draws", type=int, default=10)
    parser.add_argument("--reference", action="store_true", help="also run the plain 40-step, EOT-10 reference attack")
    parser.add_argument("--no-grid", action="store_true", help="only the reference attack and the table")
    parser.add_argument("--scoring-noise", type=int, default=0, metavar="K",
                        help="re-score each stored run's last iterate with K other sets of --eval-draws draws")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("results/adaptive-convergence"))
    parser.add_argument("--log", default=None, help="append progress lines to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.output)
    for defense in args.defenses.split(","):
        setups = build_setups(args, defense)
        cleans = []
        for setup in setups:
            cleans.append(correct(draws(setup.defended, setup.x, args.eval_draws, seed_of(args.seed, setup.dataset, "score")), setup.y))
            log(args, f"{defense} {setup.dataset}: clean majority {100 * float(cleans[-1]['majority'].float().mean()):.1f}%")
        if not args.no_grid:
            for run in grid_runs(args, setups[0].attack.threat.eps):
                for setup, clean in zip(setups, cleans):
                    run_grid_point(args, store, setup, clean, run)
        if args.reference:
            for setup, clean in zip(setups, cleans):
                run_reference(args, store, setup, clean)
        if args.scoring_noise:
            for setup, clean in zip(setups, cleans):
                scoring_noise(args, store, setup, clean, args.scoring_noise)
    print(table(args, store))


if __name__ == "__main__":
    main()
