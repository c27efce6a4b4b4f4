"""The 22 real zero-shot datasets, each read from its native on-disk format under a data root.

Every dataset is a :class:`RealDatasetPlugin`: where torchvision has a loader it is used unchanged
(its file checks, md5 included, run as they do for any torchvision user); the ImageNet family,
TinyImageNet and UCF-101 have small loaders here that read the layouts the datasets ship in.
``DATASETS`` maps each name to its plugin; each plugin's :class:`Layout` gives its folder under the
data root, the expected files and how to obtain them (README "Real datasets" lists them all).

Pixels (``ZeroShotDataset.pixels``, recorded in ``DataSpec.resolution``):

* fixed-size datasets are served at their native resolution: CIFAR-10/100 32×32, STL-10 96×96,
  PCAM 96×96, EuroSAT 64×64, TinyImageNet 64×64; the model resizes inside its forward, so the
  attack's ε-ball lives on these pixels (TeCoA/FARE convention, docs/provenance.md#resolution);
* datasets whose images vary in size (all others) cannot be batched as stored; they are resized at
  load, deterministically, to 224×224: shorter side to 224 with bicubic (antialiased) interpolation,
  then a centre crop: OpenAI CLIP's own evaluation preprocessing for a 224 model. The ε-ball lives on
  these 224×224 pixels.

Labels are read without decoding any image (for class-balanced sample selection).

CoOp's fixed splits (Zhou et al., IJCV 2022): the nine datasets for which CoOp publishes a
``split_zhou_<Name>.json`` (:data:`COOP_SPLITS`) offer the split :data:`COOP_TEST` = ``"coop-test"``:
the file's ``test`` list, read from ``<data root>/coop_splits/`` (the files are not shipped; CoOp's
DATASETS.md links them), over the same images as the dataset's other splits. Its class names are the
file's, in label order, with ``_`` → space as CoOp's zero-shot classifier writes them; the pixel
convention is the dataset's.

Missing files raise :class:`~vlmbench.data.DatasetNotFoundError` with a one-line message naming the
expected folder and how to obtain it; nothing falls back to another split or fewer samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmbench.data import DatasetNotFoundError, DatasetPlugin, ZeroShotDataset
from vlmbench.datasets import text
from vlmbench.errors import VlmbenchError

VARIABLE_SIZE = 224  # load-time size of datasets whose images vary in size
COOP_TEST = "coop-test"  # the split name of CoOp's fixed test lists
COOP_SPLITS = "coop_splits"  # the folder under the data root that holds CoOp's split files
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class RealDataset(ZeroShotDataset):
    """A split of a real dataset: items are decoded on access.

    Items: ``float32`` ``(3, H, W)`` in ``[0, 1]``; ``H = W = size`` when ``size`` is set (resized
    at load as the module docstring says), otherwise the stored pixels. Labels are ints in ``[0, C)``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        fetch: Callable[[int], Image.Image],
        labels: Sequence[int],
        size: int | None,
    ) -> None:
        self.name = name
        self.split = split
        self.classnames = tuple(classnames)
        self.templates = tuple(templates)
        self._fetch = fetch
        self._labels = [int(label) for label in labels]
        self.size = size
        self.pixels = "native" if size is None else (
            f"resized at load to {size}x{size} (shorter side to {size}, bicubic with antialias, centre crop)"
        )

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> list[int]:
        """All labels in index order (no image is decoded)."""
        return list(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name}/{self.split} of size {len(self)}")
        image = self._fetch(index).convert("RGB")
        if self.size is not None:
            image = resize_centre_crop(image, self.size)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), self._labels[index]


def resize_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic, PIL's antialiased resampling), then the central ``size``×``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class Layout:
    """Where a dataset lives under the data root and how to obtain it (documentation and status)."""

    folder: str  # relative to the data root; its existence makes the status "ready"
    obtain: str  # one line: where to get it and what to unpack where
    tree: str  # the expected files, for the README


@dataclass(frozen=True)
class CoopSplit:
    """CoOp's fixed split of one dataset (KaiyangZhou/CoOp, DATASETS.md and ``datasets/<name>.py``).

    The split file is JSON ``{"train", "val", "test"}``, each a list of ``[relative image path, label,
    class name]``; the paths are relative to CoOp's image folder of the dataset, which is
    ``images`` (relative to the data root) in vlmbench's layout.
    """

    file: str  # split_zhou_<Name>.json, looked for in <data root>/coop_splits/
    images: str  # the folder the paths are relative to, under the data root
    num_classes: int  # CoOp's class count (Caltech-101: 100, without BACKGROUND_Google and Faces_easy)
    url: str  # where CoOp publishes the file


@dataclass(frozen=True)
class Opened:
    fetch: Callable[[int], Image.Image]
    labels: Sequence[int]
    classnames: Sequence[str]


class RealDatasetPlugin(DatasetPlugin):
    """A real dataset: its splits, documented class count, native size, layout and loader.

    Args:
        name, description, splits: as :class:`~vlmbench.data.DatasetPlugin`.
        num_classes: the documented class count; a copy with another count is refused.
        native_size: the stored side length of fixed-size datasets (served as is), or None when the
            images vary in size (served at :data:`VARIABLE_SIZE`).
        layout: the on-disk layout under the data root.
        opener: ``opener(root, split) -> Opened``: reads the split's index (not the images).
        downloader: ``downloader(root)`` fetches the files with the dataset's own loader, or None.
        in_distribution_for: training sets of methods for which this dataset is not zero-shot.
        coop: CoOp's fixed split of this dataset, offered as split :data:`COOP_TEST`, or None.
    """

    def __init__(
        self,
        name: str,
        description: str,
        splits: Sequence[str],
        num_classes: int,
        native_size: int | None,
        layout: Layout,
        opener: Callable[[Path, str], Opened],
        downloader: Callable[[Path], Any] | None = None,
        in_distribution_for: str = "",
        coop: CoopSplit | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.splits = (*splits, COOP_TEST) if coop is not None else tuple(splits)
        self.num_classes = num_classes
        self.native_size = native_size
        self.layout = layout
        self.opener = opener
        self.downloader = downloader
        self.can_download = downloader is not None
        self.in_distribution_for = in_distribution_for
        self.coop = coop

    def status_rule(self) -> tuple[str, str]:
        return ("folder", self.layout.folder)

    def _missing(self, data_root: Path | None, detail: str = "", also: str = "") -> DatasetNotFoundError:
        where = f"{Path(data_root) / self.layout.folder} not found" if data_root is not None else "no data root given (--data-root or VLMBENCH_DATA_ROOT)"
        fetch = " or run with --download" if self.can_download else ""
        return DatasetNotFoundError(f"dataset {self.name!r}: {where}{detail}; {self.layout.obtain}{fetch}{also} (README, 'Real datasets')")

    def _coop_file(self, data_root: Path | None) -> tuple[Path, str]:
        """CoOp's split file under ``data_root`` and how to get it (one clause)."""
        assert self.coop is not None
        folder = Path(data_root) / COOP_SPLITS if data_root is not None else Path("<data root>") / COOP_SPLITS
        return folder / self.coop.file, f"get {self.coop.file} from {self.coop.url} (linked in CoOp's DATASETS.md) into {folder}/"

    def download(self, data_root: Path) -> None:
        if self.downloader is None:
            raise self._missing(data_root, "; it cannot be downloaded automatically")
        Path(data_root).mkdir(parents=True, exist_ok=True)
        self.downloader(Path(data_root))

    def load(self, data_root: Path | None, split: str | None = None) -> RealDataset:
        split = split or self.splits[0]
        if split not in self.splits:
            raise VlmbenchError(f"dataset {self.name!r} has splits {', '.join(self.splits)}, not {split!r}")
        split_file, get_split_file = self._coop_file(data_root) if split == COOP_TEST else (None, "")
        if self.status(data_root) != "ready":
            also = f"; for split {COOP_TEST!r} also {get_split_file}" if split_file and not split_file.is_file() else ""
            raise self._missing(data_root, also=also)
        assert data_root is not None
        opener, num_classes = self.opener, self.num_classes
        if split_file is not None:
            if not split_file.is_file():
                raise DatasetNotFoundError(f"dataset {self.name!r}, split {COOP_TEST!r}: CoOp's split file {split_file} not found; "
                                           f"{get_split_file} (README, 'Real datasets')")
            coop = self.coop
            assert coop is not None
            opener, num_classes = (lambda root, _: _coop_test(root, coop)), coop.num_classes
        try:
            opened = opener(Path(data_root), split)
        except ImportError as exc:
            raise VlmbenchError(f"dataset {self.name!r} needs {exc.name}: pip install 'vlmbench[datasets]'") from None
        except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
            raise self._missing(data_root, f" or incomplete ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        if len(opened.classnames) != num_classes:
            raise self._missing(data_root, f" or incomplete (found {len(opened.classnames)} classes, expected {num_classes})")
        if not opened.labels:
            raise self._missing(data_root, f" or incomplete (split {split!r} has no images)")
        templates, _ = text.text_for("clip_benchmark", self.name)
        return RealDataset(self.name, split, opened.classnames, templates, opened.fetch, opened.labels,
                           None if self.native_size is not None else VARIABLE_SIZE)


# --- torchvision-backed openers -----------------------------------------------------------------

def _tv(cls_name: str) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, cls_name)


def _fetch_of(dataset: Any) -> Callable[[int], Image.Image]:
    return lambda index: dataset[index][0]


def _cifar(cls_name: str) -> Callable[[Path, str], Opened]:
    def open_(root: Path, split: str) -> Opened:
        ds = _tv(cls_name)(str(root), train=split == "train")
        return Opened(_fetch_of(ds), ds.targets, [text.clean(c) for c in ds.classes])
    return open_


def _stl10(root: Path, split: str) -> Opened:
    ds = _tv("STL10")(str(root), split=split)
    return Opened(_fetch_of(ds), ds.labels.tolist(), ds.classes)


def _caltech101(root: Path, split: str) -> Opened:
    ds = _tv("Caltech101")(str(root), target_type="category")
    return Opened(_fetch_of(ds), ds.y, text.classnames("caltech101"))


def _caltech256(root: Path, split: str) -> Opened:
    ds = _tv("Caltech256")(str(root))
    # folders are "001.ak47" ... "257.clutter"; some carry a "-101" suffix (taken from Caltech-101)
    names = [text.clean(re.sub(r"-101$", "", c.split(".", 1)[1]).replace("-", " ")) for c in ds.categories]
    return Opened(_fetch_of(ds), ds.y, names)


def _pets(root: Path, split: str) -> Opened:
    ds = _tv("OxfordIIITPet")(str(root), split=split, target_types="category")
    return Opened(_fetch_of(ds), ds._labels, text.classnames("oxford-pets"))


def _flowers(root: Path, split: str) -> Opened:
    ds = _tv("Flowers102")(str(root), split=split)
    return Opened(_fetch_of(ds), ds._labels, text.classnames("flowers102"))


def _aircraft(root: Path, split: str) -> Opened:
    ds = _tv("FGVCAircraft")(str(root), split=split, annotation_level="variant")
    return Opened(_fetch_of(ds), ds._labels, ds.classes)


def _cars(root: Path, split: str) -> Opened:
    ds = _tv("StanfordCars")(str(root), split=split)
    return Opened(_fetch_of(ds), [label for _, label in ds._samples], ds.classes)


def _sun397(root: Path, split: str) -> Opened:
    ds = _tv("SUN397")(str(root))
    return Opened(_fetch_of(ds), ds._labels, [text.clean(c) for c in ds.classes])


def _country211(root: Path, split: str) -> Opened:
    ds = _tv("Country211")(str(root), split=split)
    return Opened(_fetch_of(ds), ds.targets, text.classnames("country211"))


def _food101(root: Path, split: str) -> Opened:
    ds = _tv("Food101")(str(root), split=split)
    return Opened(_fetch_of(ds), ds._labels, [text.clean(c) for c in ds.classes])


def _eurosat(root: Path, split: str) -> Opened:
    ds = _tv("EuroSAT")(str(root))
    return Opened(_fetch_of(ds), ds.targets, text.classnames("eurosat"))


def _dtd(root: Path, split: str) -> Opened:
    ds = _tv("DTD")(str(root), split=split, partition=1)
    return Opened(_fetch_of(ds), ds._labels, [text.clean(c) for c in ds.classes])


def _pcam(root: Path, split: str) -> Opened:
    import h5py

    ds = _tv("PCAM")(str(root), split=split)
    with h5py.File(root / "pcam" / ds._FILES[split]["targets"][0]) as targets:
        labels = targets["y"][:, 0, 0, 0].astype(int).tolist()
    return Opened(_fetch_of(ds), labels, text.classnames("pcam"))


def _downloader(cls_name: str, **kwargs: Any) -> Callable[[Path], Any]:
    return lambda root: _tv(cls_name)(str(root), download=True, **kwargs)


# --- openers for layouts torchvision has no loader for -------------------------------------------

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _folder_classes(base: Path, folders: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Images of ``base/<folders[k]>/`` with label ``k``; every folder must exist."""
    missing = [f for f in folders if not (base / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(folders)} class folders missing in {base}, e.g. {missing[0]}")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        images = _images_in(base / folder)
        paths += images
        labels += [label] * len(images)
    return paths, labels


def _opened_files(paths: list[Path], labels: list[int], names: Sequence[str]) -> Opened:
    return Opened(lambda index: Image.open(paths[index]), labels, names)


def _imagenet_subset(subfolder: str, wnid_key: str) -> Callable[[Path, str], Opened]:
    """ImageNet-style ``<wnid>/`` folders for the synsets of ``wnid_key``, labelled in ImageNet order."""

    def open_(root: Path, split: str) -> Opened:
        meta = text.imagenet()
        wanted = set(meta[wnid_key])
        pairs = [(wnid, name) for wnid, name in zip(meta["wnids"], meta["classnames"]) if wnid in wanted]
        paths, labels = _folder_classes(root / subfolder, [wnid for wnid, _ in pairs])
        return _opened_files(paths, labels, [name for _, name in pairs])

    return open_


def _imagenet_v2(root: Path, split: str) -> Opened:
    names = text.imagenet()["classnames"]
    paths, labels = _folder_classes(root / "imagenetv2-matched-frequency-format-val", [str(k) for k in range(len(names))])
    return _opened_files(paths, labels, names)


def _tinyimagenet(root: Path, split: str) -> Opened:
    base = root / "tiny-imagenet-200"
    wnids = sorted(line.strip() for line in (base / "wnids.txt").read_text().splitlines() if line.strip())
    words = dict(line.split("\t", 1) for line in (base / "words.txt").read_text().splitlines() if "\t" in line)
    names = [words[w].split(",")[0].strip() for w in wnids]
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        if line.strip():
            filename, wnid = line.split("\t")[:2]
            paths.append(base / "val" / "images" / filename)
            labels.append(index[wnid])
    return _opened_files(paths, labels, names)


def _ucf101_folder(action: str) -> str:
    """CoOp's middle-frame folder of a UCF101 action: ``ApplyEyeMakeup`` → ``Apply_Eye_Makeup``."""
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action)) or action


def _ucf101(root: Path, split: str) -> Opened:
    base = root / "ucf101"
    classes = {}
    for line in (base / "ucfTrainTestlist" / "classInd.txt").read_text().splitlines():
        if line.strip():
            number, folder = line.split()
            classes[folder] = int(number) - 1
    folders = sorted(classes, key=classes.get)
    names = [_ucf101_folder(folder).replace("_", " ") for folder in folders]  # ApplyEyeMakeup → Apply Eye Makeup
    paths, labels = [], []
    for line in (base / "ucfTrainTestlist" / "testlist01.txt").read_text().splitlines():
        if line.strip():
            folder, video = line.split()[0].split("/")
            paths.append(base / "UCF-101-midframes" / _ucf101_folder(folder) / Path(video).with_suffix(".jpg"))
            labels.append(classes[folder])
    missing = [p for p in paths[:1] + paths[-1:] if not p.exists()]
    if missing:
        raise FileNotFoundError(f"middle frame {missing[0]} missing")
    return _opened_files(paths, labels, names)


def _coop_test(root: Path, coop: CoopSplit) -> Opened:
    """The ``test`` list of CoOp's split file; class names from all three lists (CoOp writes ``_`` as space)."""
    split = json.loads((root / COOP_SPLITS / coop.file).read_text(encoding="utf-8"))
    names: dict[int, str] = {}
    for _, label, name in (*split["train"], *split["val"], *split["test"]):
        if names.setdefault(int(label), name) != name:
            raise ValueError(f"{coop.file}: label {label} is named both {names[int(label)]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{coop.file}: labels are not 0..{len(names) - 1}")
    base = root / coop.images
    paths = [base / path.lstrip("/\\") for path, _, _ in split["test"]]
    labels = [int(label) for _, label, _ in split["test"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images of {coop.file}'s test list missing, e.g. {missing[0]}")
    return _opened_files(paths, labels, [names[k].replace("_", " ") for k in range(len(names))])


def _coop(file: str, images: str, num_classes: int, drive_id: str) -> CoopSplit:
    return CoopSplit(file, images, num_classes, f"https://drive.google.com/file/d/{drive_id}/view")


# --- the registry ---------------------------------------------------------------------------------

_TV = "torchvision.datasets.{} (download=True supported)"


def _plugin(name: str, description: str, splits: Sequence[str], num_classes: int, native: int | None,
            layout: Layout, opener: Callable[[Path, str], Opened], downloader: Callable[[Path], Any] | None = None,
            in_distribution_for: str = "", coop: CoopSplit | None = None) -> RealDatasetPlugin:
    return RealDatasetPlugin(name, description, splits, num_classes, native, layout, opener, downloader, in_distribution_for, coop)


CIFAR10 = _plugin("cifar10", "CIFAR-10 test (10k, 32x32)", ("test", "train"), 10, 32,
                  Layout("cifar-10-batches-py", "get https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it in the data root",
                         "cifar-10-batches-py/{batches.meta,data_batch_1..5,test_batch}"),
                  _cifar("CIFAR10"), _downloader("CIFAR10", train=False))
CIFAR100 = _plugin("cifar100", "CIFAR-100 test (10k, 32x32)", ("test", "train"), 100, 32,
                   Layout("cifar-100-python", "get https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and unpack it in the data root",
                          "cifar-100-python/{meta,train,test}"),
                   _cifar("CIFAR100"), _downloader("CIFAR100", train=False))
STL10 = _plugin("stl10", "STL-10 test (8k, 96x96)", ("test", "train"), 10, 96,
                Layout("stl10_binary", "get http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and unpack it in the data root",
                       "stl10_binary/{class_names.txt,test_X.bin,test_y.bin,train_X.bin,train_y.bin}"),
                _stl10, _downloader("STL10", split="test"))
IMAGENET = _plugin("imagenet", "ImageNet-1k validation (50k, resized to 224)", ("val",), 1000, None,
                   Layout("imagenet/val", "download ILSVRC2012_img_val.tar from https://image-net.org (login) and sort it into one folder per synset",
                          "imagenet/val/n01440764/ILSVRC2012_val_00000293.JPEG ... (1000 synset folders)"),
                   _imagenet_subset("imagenet/val", "wnids"))
CALTECH101 = _plugin("caltech101", "Caltech-101, all images (8.7k, 101 classes without background, resized to 224)", ("all",), 101, None,
                     Layout("caltech101/101_ObjectCategories", "get caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02 and unpack 101_ObjectCategories.tar.gz into caltech101/",
                            "caltech101/101_ObjectCategories/<category>/image_0001.jpg ..."),
                     _caltech101, _downloader("Caltech101"),
                     coop=_coop("split_zhou_Caltech101.json", "caltech101/101_ObjectCategories", 100, "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"))
CALTECH256 = _plugin("caltech256", "Caltech-256, all images (30.6k, 257 classes incl. clutter, resized to 224)", ("all",), 257, None,
                     Layout("caltech256/256_ObjectCategories", "get 256_ObjectCategories.tar from https://data.caltech.edu/records/nyy15-4j048 and unpack it into caltech256/",
                            "caltech256/256_ObjectCategories/001.ak47/001_0001.jpg ..."),
                     _caltech256, _downloader("Caltech256"))
OXFORD_PETS = _plugin("oxford-pets", "Oxford-IIIT Pets test (3.7k, 37 breeds, resized to 224)", ("test", "trainval"), 37, None,
                      Layout("oxford-iiit-pet", "get images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ and unpack both into oxford-iiit-pet/",
                             "oxford-iiit-pet/{images/*.jpg, annotations/{test,trainval}.txt}"),
                      _pets, _downloader("OxfordIIITPet", split="test"),
                      coop=_coop("split_zhou_OxfordPets.json", "oxford-iiit-pet/images", 37, "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"))
FLOWERS102 = _plugin("flowers102", "Oxford Flowers-102 test (6.1k, resized to 224)", ("test", "val", "train"), 102, None,
                     Layout("flowers-102", "get 102flowers.tgz, imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into flowers-102/ and unpack the .tgz there",
                            "flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}"),
                     _flowers, _downloader("Flowers102", split="test"),
                     coop=_coop("split_zhou_OxfordFlowers.json", "flowers-102/jpg", 102, "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"))
FGVC_AIRCRAFT = _plugin("fgvc-aircraft", "FGVC-Aircraft test (3.3k, 100 variants, resized to 224)", ("test", "val", "train", "trainval"), 100, None,
                        Layout("fgvc-aircraft-2013b", "get fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and unpack it in the data root",
                               "fgvc-aircraft-2013b/data/{images/*.jpg, variants.txt, images_variant_test.txt, ...}"),
                        _aircraft, _downloader("FGVCAircraft", split="test"))
STANFORD_CARS = _plugin("stanford-cars", "Stanford Cars test (8k, 196 models, resized to 224)", ("test", "train"), 196, None,
                        Layout("stanford_cars", "the original site is gone: get cars_test/, devkit/ and cars_test_annos_withlabels.mat from a mirror (e.g. Kaggle 'stanford-cars-dataset') into stanford_cars/",
                               "stanford_cars/{cars_test/00001.jpg ..., cars_test_annos_withlabels.mat, devkit/cars_meta.mat}"),
                        _cars, coop=_coop("split_zhou_StanfordCars.json", "stanford_cars", 196, "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"))
SUN397 = _plugin("sun397", "SUN397, all images (108.8k, resized to 224)", ("all",), 397, None,
                 Layout("SUN397", "get http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz and unpack it in the data root",
                        "SUN397/{ClassName.txt, a/abbey/sun_*.jpg, ...}"),
                 _sun397, _downloader("SUN397"),
                 coop=_coop("split_zhou_SUN397.json", "SUN397", 397, "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"))
COUNTRY211 = _plugin("country211", "Country211 test (21.1k, resized to 224)", ("test", "valid", "train"), 211, None,
                     Layout("country211", "get https://openaipublic.azureedge.net/clip/data/country211.tgz and unpack it in the data root",
                            "country211/test/<ISO code>/*.jpg"),
                     _country211, _downloader("Country211", split="test"))
FOOD101 = _plugin("food101", "Food-101 test (25.3k, resized to 224)", ("test", "train"), 101, None,
                  Layout("food-101", "get http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz and unpack it in the data root",
                         "food-101/{images/<class>/<id>.jpg, meta/{test,train}.json}"),
                  _food101, _downloader("Food101", split="test"),
                  coop=_coop("split_zhou_Food101.json", "food-101/images", 101, "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"))
EUROSAT = _plugin("eurosat", "EuroSAT RGB, all images (27k, 64x64)", ("all",), 10, 64,
                  Layout("eurosat/2750", "get https://huggingface.co/datasets/torchgeo/eurosat/resolve/main/EuroSAT.zip and unpack it into eurosat/",
                         "eurosat/2750/<class>/<class>_<n>.jpg"),
                  _eurosat, _downloader("EuroSAT"),
                  coop=_coop("split_zhou_EuroSAT.json", "eurosat/2750", 10, "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"))
DTD = _plugin("dtd", "Describable Textures test, partition 1 (1.9k, resized to 224)", ("test", "val", "train"), 47, None,
              Layout("dtd/dtd", "get https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz and unpack it into dtd/",
                     "dtd/dtd/{images/<class>/*.jpg, labels/test1.txt, ...}"),
              _dtd, _downloader("DTD", split="test"),
              coop=_coop("split_zhou_DescribableTextures.json", "dtd/dtd/images", 47, "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"))
PCAM = _plugin("pcam", "PatchCamelyon test (32.8k, 96x96)", ("test", "val", "train"), 2, 96,
               Layout("pcam", "get camelyonpatch_level_2_split_test_{x,y}.h5.gz from https://github.com/basveeling/pcam, gunzip them into pcam/ (needs h5py)",
                      "pcam/camelyonpatch_level_2_split_test_{x,y}.h5"),
               _pcam, _downloader("PCAM", split="test"))
IMAGENET_R = _plugin("imagenet-r", "ImageNet-R (30k renditions, 200 classes, resized to 224)", ("test",), 200, None,
                     Layout("imagenet-r", "get https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar and unpack it in the data root",
                            "imagenet-r/<wnid>/*.jpg (200 synsets)"),
                     _imagenet_subset("imagenet-r", "imagenet_r_wnids"))
IMAGENET_SKETCH = _plugin("imagenet-sketch", "ImageNet-Sketch (50.9k, 1000 classes, resized to 224)", ("test",), 1000, None,
                          Layout("imagenet-sketch/sketch", "get ImageNet-Sketch.zip (https://github.com/HaohanWang/ImageNet-Sketch) and unpack it into imagenet-sketch/",
                                 "imagenet-sketch/sketch/<wnid>/*.JPEG (1000 synsets)"),
                          _imagenet_subset("imagenet-sketch/sketch", "wnids"))
IMAGENET_A = _plugin("imagenet-a", "ImageNet-A (7.5k natural adversarial, 200 classes, resized to 224)", ("test",), 200, None,
                     Layout("imagenet-a", "get https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar and unpack it in the data root",
                            "imagenet-a/<wnid>/*.jpg (200 synsets)"),
                     _imagenet_subset("imagenet-a", "imagenet_a_wnids"))
IMAGENET_V2 = _plugin("imagenet-v2", "ImageNetV2 matched-frequency (10k, resized to 224)", ("test",), 1000, None,
                      Layout("imagenetv2-matched-frequency-format-val", "get imagenetv2-matched-frequency.tar.gz (https://github.com/modestyachts/ImageNetV2) and unpack it in the data root",
                             "imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg"),
                      _imagenet_v2)
TINYIMAGENET = _plugin("tinyimagenet", "TinyImageNet validation (10k, 200 classes, 64x64; in-distribution for TinyImageNet-trained AFT)", ("val",), 200, 64,
                       Layout("tiny-imagenet-200", "get http://cs231n.stanford.edu/tiny-imagenet-200.zip and unpack it in the data root",
                              "tiny-imagenet-200/{wnids.txt, words.txt, val/val_annotations.txt, val/images/val_0.JPEG ...}"),
                       _tinyimagenet, in_distribution_for="TinyImageNet (PMG-AFT, TGA-ZSR, HPT-GPD, and TeCoA as re-trained by TTC)")
UCF101 = _plugin("ucf101", "UCF101 middle frames, test list 1 (3.8k, resized to 224)", ("test",), 101, None,
                 Layout("ucf101/UCF-101-midframes", "get CoOp's UCF-101-midframes.zip (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md) and UCF101TrainTestSplits-RecognitionTask.zip (https://www.crcv.ucf.edu/data/UCF101.php) into ucf101/",
                        "ucf101/{UCF-101-midframes/<Class_Words>/v_<ClassWords>_gXX_cYY.jpg, ucfTrainTestlist/{classInd.txt,testlist01.txt}}"),
                 _ucf101, coop=_coop("split_zhou_UCF101.json", "ucf101/UCF-101-midframes", 101, "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"))

DATASETS: dict[str, RealDatasetPlugin] = {
    plugin.name: plugin for plugin in (
        CIFAR10, CIFAR100, STL10, IMAGENET, CALTECH101, CALTECH256, OXFORD_PETS, FLOWERS102, FGVC_AIRCRAFT,
        STANFORD_CARS, SUN397, COUNTRY211, FOOD101, EUROSAT, DTD, PCAM, IMAGENET_R, IMAGENET_SKETCH,
        IMAGENET_A, IMAGENET_V2, TINYIMAGENET, UCF101,
    )
}
