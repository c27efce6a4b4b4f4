"""Protocol presets: the literature's dataset protocols, selectable by name (``vlmbench run --protocol``).

A preset fixes the datasets, each one's split and sample count, how samples are selected, the
prompt-template set and the resolution convention; all of it is recorded in every row's protocol
(``DataSpec.preset``, ``.templates``, ``.selection``, ``.resolution``). Sources:
docs/provenance.md#protocols (protocols A, B, C and the 22-dataset superset).

===================  ==========================================================================
preset               what it reproduces
===================  ==========================================================================
``tecoa16``          Protocol A as in TeCoA/PMG-AFT/TGA-ZSR: TTC's 16 datasets, full test splits
                     (all images of SUN397, Caltech-101/256, EuroSAT), TeCoA prompts, native
                     pixels resized inside the model
``ttc16``            the same 16 datasets as evaluated by TTC (and SCC/DOC): TTC prompts, every
                     image resized to 224×224 *before* the attack (CIFAR/STL ε-ball at 224)
``fare13``           Protocol B (FARE / CLIP_benchmark / RobustBench): 13 zero-shot datasets with
                     1000 seeded random samples each, plus ImageNet with 5000, CLIP_benchmark
                     templates (80 for ImageNet)
``coop``             Protocol C (CoOp / TPT lineage: R-TPT, MAC, TTP): 10 fine-grained datasets +
                     ImageNet and its four variants, CoOp's prompt per dataset; the nine datasets
                     with a ``split_zhou_<Name>.json`` on its ``coop-test`` split (the file's
                     ``test`` list and class names), FGVC-Aircraft and the ImageNet sets on their
                     official test/val splits, as in CoOp
``all22``            the 22-dataset superset, full default splits, CLIP_benchmark templates
``world``            the embedded synthetic world (no files), its own prompts
===================  ==========================================================================

Known deviations, stated rather than hidden:

* ``fare13``: FARE does not publish its 1000-sample subsets; vlmbench draws them with the run's
  seed (uniformly, not class-balanced) and records their hash and indices, so two vlmbench runs
  compare the same images. CLIP_benchmark keeps Caltech-101's background class (102 classes);
  vlmbench uses torchvision's 101 classes (and CoOp's 100 on ``coop-test``, as CoOp does).
* ``coop``: the split files are not shipped (CoOp publishes them on Google Drive); a run without
  them stops and says where to get them. CoOp's zero-shot CLIP resizes and centre-crops every image
  to 224 before the model; vlmbench serves EuroSAT at its native 64×64 (the ε-ball on the stored
  pixels) and the other datasets resized to 224 at load.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmbench.errors import VlmbenchError
from vlmbench.preflight import SELECTIONS
from vlmbench.registry import unknown_name_message

RESOLUTIONS = ("native", "224-before-attack")


@dataclass(frozen=True)
class PresetDataset:
    """One dataset of a preset: its split (None: the dataset's default) and sample count (None: all)."""

    name: str
    split: str | None = None
    n_samples: int | None = None


@dataclass(frozen=True)
class Preset:
    """A named dataset protocol.

    Attributes:
        name: what ``--protocol`` takes.
        description: one line.
        datasets: the datasets in reporting order.
        selection: how subsets are drawn when ``n_samples`` is below the split size
            (:data:`SELECTIONS`; seeded by the run's seed).
        templates: template set (:func:`vlmbench.datasets.text.template_sets`).
        resolution: ``"native"`` (the model resizes inside its forward, so the attack acts on the
            dataset's pixels) or ``"224-before-attack"`` (items resized to 224×224 first, TTC's way).
        source: where the protocol is defined.
    """

    name: str
    description: str
    datasets: tuple[PresetDataset, ...]
    selection: str
    templates: str
    resolution: str
    source: str

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS or self.resolution not in RESOLUTIONS:
            raise ValueError(f"preset {self.name!r}: bad selection or resolution")


_TTC16 = ("cifar10", "cifar100", "stl10", "imagenet", "caltech101", "caltech256", "oxford-pets", "flowers102",
          "fgvc-aircraft", "stanford-cars", "sun397", "country211", "food101", "eurosat", "dtd", "pcam")
_FARE13 = ("cifar10", "cifar100", "stl10", "stanford-cars", "caltech101", "oxford-pets", "flowers102", "dtd",
           "eurosat", "fgvc-aircraft", "pcam", "imagenet-r", "imagenet-sketch")
_COOP = ("caltech101", "dtd", "eurosat", "fgvc-aircraft", "flowers102", "food101", "oxford-pets", "stanford-cars",
         "sun397", "ucf101", "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")
_COOP_SPLIT = {"caltech101", "dtd", "eurosat", "flowers102", "food101", "oxford-pets", "stanford-cars", "sun397",
               "ucf101"}  # the datasets with a split_zhou_<Name>.json: evaluated on its test list ("coop-test")
_ALL22 = (*_TTC16, "imagenet-r", "imagenet-sketch", "imagenet-a", "imagenet-v2", "tinyimagenet", "ucf101")
_WORLD = ("world-shape", "world-colour", "world-count", "world-texture", "world-size", "world-combo")

PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (
        Preset("tecoa16", "Protocol A (TeCoA, PMG-AFT, TGA-ZSR): TTC's 16 datasets, full splits, TeCoA prompts, native pixels",
               tuple(PresetDataset(n) for n in _TTC16), "first", "tecoa", "native",
               "TeCoA (Mao et al. 2023) and TTC (Xing et al. 2025) evaluation code; docs/provenance.md#protocols"),
        Preset("ttc16", "Protocol A as run by TTC/SCC/DOC: 16 datasets, full splits, TTC prompts, resized to 224 before the attack",
               tuple(PresetDataset(n) for n in _TTC16), "first", "ttc", "224-before-attack",
               "TTC (Xing et al. 2025) code/test_time_counterattack.py; docs/provenance.md#protocols"),
        Preset("fare13", "Protocol B (FARE, CLIP_benchmark): 13 datasets x 1000 seeded samples + ImageNet x 5000, CLIP_benchmark templates",
               (PresetDataset("imagenet", None, 5000), *(PresetDataset(n, None, 1000) for n in _FARE13)),
               "random", "clip_benchmark", "native",
               "FARE (Schlarmann et al. 2024), chs20/RobustVLM README; CLIP_benchmark; docs/provenance.md#protocols"),
        Preset("coop", "Protocol C (CoOp/TPT lineage): 10 fine-grained datasets + ImageNet and 4 variants, CoOp prompts",
               tuple(PresetDataset(n, "coop-test" if n in _COOP_SPLIT else None) for n in _COOP), "first", "coop", "native",
               "CoOp (Zhou et al. 2022) DATASETS.md and trainers/zsclip.py; docs/provenance.md#protocols"),
        Preset("all22", "All 22 real datasets, full default splits, CLIP_benchmark templates, native pixels",
               tuple(PresetDataset(n) for n in _ALL22), "first", "clip_benchmark", "native",
               "docs/provenance.md#protocols (the 22-dataset superset)"),
        Preset("world", "The embedded synthetic world: 6 generated datasets, their own prompts",
               tuple(PresetDataset(n) for n in _WORLD), "first", "dataset", "native", "vlmbench.world"),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise VlmbenchError(unknown_name_message("protocol preset", name, sorted(PRESETS)))
    return PRESETS[name]
