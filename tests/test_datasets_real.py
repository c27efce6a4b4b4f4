"""The 22 real datasets, each loaded from a tiny fabricated copy in its native on-disk format.

Each fabricator writes the files the dataset's loader reads (torchvision's, or ours) under a temp data
root, one or two images per class, every image of uniform colour ``colour(label)``. Loading goes
through the registered plugin, so the test covers the real path: layout, split files, label parsing,
class-name source, the documented class count, pixel range and the resolution convention; the
colour check proves each item's label belongs to its image. torchvision's md5 checks are the only
thing patched (fabricated files cannot match the published checksums).
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbench.data import DatasetNotFoundError
from vlmbench.datasets import real, text
from vlmbench.registry import plugins

NATIVE = {"cifar10": 32, "cifar100": 32, "stl10": 96, "pcam": 96, "eurosat": 64, "tinyimagenet": 64}
DOCUMENTED_CLASSES = {
    "cifar10": 10, "cifar100": 100, "stl10": 10, "imagenet": 1000, "caltech101": 101, "caltech256": 257,
    "oxford-pets": 37, "flowers102": 102, "fgvc-aircraft": 100, "stanford-cars": 196, "sun397": 397,
    "country211": 211, "food101": 101, "eurosat": 10, "dtd": 47, "pcam": 2, "imagenet-r": 200,
    "imagenet-sketch": 1000, "imagenet-a": 200, "imagenet-v2": 1000, "tinyimagenet": 200, "ucf101": 101,
}


def colour(label: int) -> tuple[int, int, int]:
    return (label * 37 + 20) % 256, (label * 91 + 40) % 256, (label * 53 + 60) % 256


def image(path: Path, label: int, size: tuple[int, int] = (40, 30)) -> None:
    """A uniform image of ``colour(label)``; the default size is not square, to exercise the resize."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour(label)).save(path, quality=100)


def pixels(labels: list[int], side: int) -> np.ndarray:
    """``(N, side, side, 3)`` uint8 images of uniform ``colour(label)``."""
    return np.stack([np.broadcast_to(np.array(colour(y), np.uint8), (side, side, 3)) for y in labels])


def _cifar(root: Path, folder: str, meta: str, meta_key: str, label_key: str, files: list[str], n: int) -> list[int]:
    base = root / folder
    base.mkdir(parents=True)
    labels = [k % n for k in range(n + 3)]
    data = pixels(labels, 32).transpose(0, 3, 1, 2).reshape(len(labels), -1)  # CIFAR stores CHW rows
    with open(base / meta, "wb") as f:
        pickle.dump({meta_key: [f"class_{k}" for k in range(n)]}, f)
    with open(base / "test_batch" if "test_batch" in files else base / "test", "wb") as f:
        pickle.dump({"data": data, label_key: labels}, f)
    for name in files:
        (base / name).touch(exist_ok=True)  # training files must exist for torchvision's checks
    return labels


def cifar10(root: Path) -> list[int]:
    return _cifar(root, "cifar-10-batches-py", "batches.meta", "label_names", "labels",
                  [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"], 10)


def cifar100(root: Path) -> list[int]:
    return _cifar(root, "cifar-100-python", "meta", "fine_label_names", "fine_labels", ["train", "test"], 100)


def stl10(root: Path) -> list[int]:
    base = root / "stl10_binary"
    base.mkdir()
    labels = [k % 10 for k in range(12)]
    # STL-10 stores each image channel-major and column-major
    pixels(labels, 96).transpose(0, 3, 2, 1).tofile(base / "test_X.bin")
    (np.array(labels, np.uint8) + 1).tofile(base / "test_y.bin")
    (base / "class_names.txt").write_text("\n".join(f"class_{k}" for k in range(10)) + "\n")
    for name in ("train_X.bin", "train_y.bin", "unlabeled_X.bin"):
        (base / name).touch()
    return labels


def _class_folders(base: Path, folders: list[str], name: Callable[[str, int], str] = lambda f, k: f"{k}.jpg") -> list[int]:
    for label, folder in enumerate(folders):
        image(base / folder / name(folder, 0), label)
    return list(range(len(folders)))


def imagenet(root: Path) -> list[int]:
    return _class_folders(root / "imagenet" / "val", text.imagenet()["wnids"], lambda f, k: f"ILSVRC2012_val_{k:08d}.JPEG")


def imagenet_r(root: Path) -> list[int]:
    return _class_folders(root / "imagenet-r", text.imagenet()["imagenet_r_wnids"])


def imagenet_a(root: Path) -> list[int]:
    return _class_folders(root / "imagenet-a", text.imagenet()["imagenet_a_wnids"])


def imagenet_sketch(root: Path) -> list[int]:
    return _class_folders(root / "imagenet-sketch" / "sketch", text.imagenet()["wnids"], lambda f, k: f"sketch_{k}.JPEG")


def imagenet_v2(root: Path) -> list[int]:
    return _class_folders(root / "imagenetv2-matched-frequency-format-val", [str(k) for k in range(1000)], lambda f, k: f"{k}.jpeg")


def caltech101(root: Path) -> list[int]:
    base = root / "caltech101" / "101_ObjectCategories"
    image(base / "BACKGROUND_Google" / "image_0001.jpg", 0)  # dropped, as torchvision does
    labels = _class_folders(base, [f"cat{k:03d}" for k in range(101)], lambda f, k: "image_0001.jpg")
    image(base / "cat000" / "image_0002.jpg", 0)
    return [*labels, 0]


def caltech256(root: Path) -> list[int]:
    folders = [f"{k + 1:03d}.thing-{k}" for k in range(256)] + ["257.clutter"]
    folders[3] = "004.baseball-bat-101"
    return _class_folders(root / "caltech256" / "256_ObjectCategories", folders, lambda f, k: f"{f[:3]}_0001.jpg")


def oxford_pets(root: Path) -> list[int]:
    base = root / "oxford-iiit-pet"
    lines, labels = [], []
    for label in range(37):
        for k in (1, 2) if label == 0 else (1,):
            image(base / "images" / f"Breed{label}_{k}.jpg", label)
            lines.append(f"Breed{label}_{k} {label + 1} 1 1")
            labels.append(label)
    (base / "annotations").mkdir()
    (base / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
    return labels


def flowers102(root: Path) -> list[int]:
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = [k % 102 for k in range(104)]
    for image_id, label in enumerate(labels, 1):
        image(base / "jpg" / f"image_{image_id:05d}.jpg", label)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels) + 1})
    ids = np.arange(1, len(labels) + 1)
    savemat(base / "setid.mat", {"trnid": ids[:1], "valid": ids[:1], "tstid": ids})
    return labels


def fgvc_aircraft(root: Path) -> list[int]:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"Variant {k}-{k}" for k in range(100)]  # names contain spaces, as "Boeing 707-320" does
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = []
    for label, variant in enumerate(variants):
        image(data / "images" / f"{1000000 + label}.jpg", label)
        lines.append(f"{1000000 + label} {variant}")
    (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    return list(range(100))


def stanford_cars(root: Path) -> list[int]:
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([f"Make {k} 2012" for k in range(196)], dtype=object)})
    labels = list(range(196))
    annotations = np.array([(f"{k + 1:05d}.jpg", label + 1) for k, label in enumerate(labels)],
                           dtype=[("fname", "O"), ("class", "O")])
    for k, label in enumerate(labels):
        image(base / "cars_test" / f"{k + 1:05d}.jpg", label)
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    return labels


def sun397(root: Path) -> list[int]:
    base = root / "SUN397"
    classes = [f"/{chr(97 + k % 26)}/scene_{k}" for k in range(396)] + ["/b/balcony/interior"]
    base.mkdir()
    (base / "ClassName.txt").write_text("\n".join(classes) + "\n")
    for label, name in enumerate(classes):
        image(base / name.lstrip("/") / f"sun_{label}.jpg", label)
    return list(range(397))


def country211(root: Path) -> list[int]:
    return _class_folders(root / "country211" / "test", [f"C{k:03d}" for k in range(211)])


def food101(root: Path) -> list[int]:
    base = root / "food-101"
    classes = [f"dish_{k:03d}" for k in range(101)]
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps({c: [f"{c}/{k}"] for k, c in enumerate(classes)}))
    for label, c in enumerate(classes):
        image(base / "images" / c / f"{label}.jpg", label)
    return list(range(101))


def eurosat(root: Path) -> list[int]:
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    for label, folder in enumerate(folders):
        image(root / "eurosat" / "2750" / folder / f"{folder}_1.jpg", label, (64, 64))
    return list(range(10))


def dtd(root: Path) -> list[int]:
    data = root / "dtd" / "dtd"
    classes = [f"texture{k:02d}" for k in range(47)]
    lines = []
    for label, c in enumerate(classes):
        image(data / "images" / c / f"{c}_0001.jpg", label)
        lines.append(f"{c}/{c}_0001.jpg")
    (data / "labels").mkdir()
    (data / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
    return list(range(47))


def pcam(root: Path) -> list[int]:
    import h5py

    base = root / "pcam"
    base.mkdir()
    labels = [0, 1, 1, 0, 1]
    with h5py.File(base / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = pixels(labels, 96)
    with h5py.File(base / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = np.array(labels, np.uint8).reshape(-1, 1, 1, 1)
    return labels


def tinyimagenet(root: Path) -> list[int]:
    base = root / "tiny-imagenet-200"
    wnids = text.imagenet()["imagenet_r_wnids"]  # any 200 synsets
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # labels follow sorted wnids
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {k}, other name" for k, w in enumerate(wnids)) + "\n")
    lines = []
    for k, wnid in enumerate(wnids):
        image(base / "val" / "images" / f"val_{k}.JPEG", k, (64, 64))
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return list(range(200))


def ucf101(root: Path) -> list[int]:
    base = root / "ucf101"
    classes = [f"Action{chr(65 + k % 26)}Thing{k}" for k in range(101)]
    (base / "ucfTrainTestlist").mkdir(parents=True)
    (base / "ucfTrainTestlist" / "classInd.txt").write_text("\n".join(f"{k + 1} {c}" for k, c in enumerate(classes)) + "\n")
    lines = []
    for label, c in enumerate(classes):  # CoOp's middle frames sit in "Action_B_Thing1/" for action "ActionBThing1"
        image(base / "UCF-101-midframes" / c.replace("Thing", "_Thing").replace("Action", "Action_") / f"v_{c}_g01_c01.jpg",
              label, (32, 24))
        lines.append(f"{c}/v_{c}_g01_c01.avi")
    (base / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(lines) + "\n")
    return list(range(101))


FABRICATORS: dict[str, Callable[[Path], list[int]]] = {
    "cifar10": cifar10, "cifar100": cifar100, "stl10": stl10, "imagenet": imagenet, "caltech101": caltech101,
    "caltech256": caltech256, "oxford-pets": oxford_pets, "flowers102": flowers102, "fgvc-aircraft": fgvc_aircraft,
    "stanford-cars": stanford_cars, "sun397": sun397, "country211": country211, "food101": food101, "eurosat": eurosat,
    "dtd": dtd, "pcam": pcam, "imagenet-r": imagenet_r, "imagenet-sketch": imagenet_sketch, "imagenet-a": imagenet_a,
    "imagenet-v2": imagenet_v2, "tinyimagenet": tinyimagenet, "ucf101": ucf101,
}


# CoOp's split files: a relative image path in each dataset's own style, and a class name as CoOp writes it
COOP_STYLE: dict[str, Callable[[int], tuple[str, str]]] = {
    "caltech101": lambda k: (f"category_{k}/image_0001.jpg", f"category_{k}"),
    "oxford-pets": lambda k: (f"Breed_{k}_1.jpg", f"breed_{k}"),
    "stanford-cars": lambda k: (f"cars_test/{k + 1:05d}.jpg", f"2012 Make Model_{k}"),
    "flowers102": lambda k: (f"image_{k + 1:05d}.jpg", f"flower {k}"),
    "food101": lambda k: (f"dish_{k}/{1000 + k}.jpg", f"dish_{k}"),
    "sun397": lambda k: (f"{chr(97 + k % 26)}/scene_{k}/indoor/sun_{k}.jpg", f"indoor scene_{k}"),
    "dtd": lambda k: (f"texture_{k}/texture_{k}_0001.jpg", f"texture_{k}"),
    "eurosat": lambda k: (f"Class{k}/Class{k}_1.jpg", f"Class {k} Land"),
    "ucf101": lambda k: (f"Action_{k}/v_Action{k}_g01_c01.jpg", f"Action_{k}"),
}


def coop_split(root: Path, name: str) -> list[int]:
    """CoOp's split file of ``name`` in ``<root>/coop_splits/`` and its test images (one per class, two of
    class 0, in shuffled order); train and val list images that are never created (only ``test`` is read)."""
    plugin = real.DATASETS[name]
    assert plugin.coop is not None
    (root / plugin.layout.folder).mkdir(parents=True, exist_ok=True)
    size = (64, 64) if name == "eurosat" else (40, 30)
    entries = []
    for label in range(plugin.coop.num_classes):
        path, classname = COOP_STYLE[name](label)
        entries.append([path, label, classname])
        image(root / plugin.coop.images / path, label, size)
    extra = [entries[0][0].replace(".jpg", "_b.jpg"), 0, entries[0][2]]
    image(root / plugin.coop.images / extra[0], 0, size)
    test = [extra, *entries[::-1]]
    split = {"train": [[f"train/{e[0]}", e[1], e[2]] for e in entries], "val": [["val/x.jpg", 0, entries[0][2]]], "test": test}
    (root / real.COOP_SPLITS).mkdir(exist_ok=True)
    (root / real.COOP_SPLITS / plugin.coop.file).write_text(json.dumps(split))
    return [label for _, label, _ in test]


@pytest.fixture
def no_md5(monkeypatch):
    """Fabricated files cannot match torchvision's published md5 sums: check existence only."""
    import torchvision.datasets.cifar
    import torchvision.datasets.flowers102
    import torchvision.datasets.stl10

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10, torchvision.datasets.flowers102):
        monkeypatch.setattr(module, "check_integrity", exists)


def test_registry_has_all_22_real_datasets():
    assert set(real.DATASETS) == set(FABRICATORS) == set(DOCUMENTED_CLASSES)
    registered = plugins().datasets.names()
    assert all(name in registered for name in real.DATASETS)


@pytest.mark.parametrize("name", sorted(FABRICATORS))
def test_dataset_loads_from_its_native_format(name, tmp_path, no_md5):
    plugin = plugins().datasets.get(name)
    assert plugin.status(tmp_path) == "missing"
    labels = FABRICATORS[name](tmp_path)
    assert plugin.status(tmp_path) == "ready"
    dataset = plugin.load(tmp_path)
    assert dataset.split == plugin.splits[0]
    assert dataset.num_classes == DOCUMENTED_CLASSES[name] == plugin.num_classes
    # OpenAI's cleaned ImageNet names, used as published, name two synset pairs alike
    duplicates = {"missile", "sunglasses"} if dataset.num_classes == 1000 else set()
    assert {n for n, c in Counter(dataset.classnames).items() if c > 1} == duplicates
    assert len(dataset) == len(labels)
    assert Counter(dataset.labels()) == Counter(labels)
    side = NATIVE.get(name, real.VARIABLE_SIZE)
    assert dataset.pixels == ("native" if name in NATIVE else dataset.pixels) and ("224x224" in dataset.pixels) != (name in NATIVE)
    for index in sorted({0, len(dataset) // 2, len(dataset) - 1}):
        x, label = dataset[index]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, side, side)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert isinstance(label, int) and label == dataset.labels()[index]
        expected = torch.tensor(colour(label), dtype=torch.float32) / 255
        assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=3 / 255), "the image does not belong to its label"


COOP_CLASSES = {"caltech101": 100, "oxford-pets": 37, "stanford-cars": 196, "flowers102": 102, "food101": 101,
                "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101}


def test_coop_splits_are_offered_exactly_where_coop_publishes_a_split_file():
    offered = {name: plugin.coop.num_classes for name, plugin in real.DATASETS.items() if plugin.coop is not None}
    assert offered == COOP_CLASSES and set(COOP_STYLE) == set(COOP_CLASSES)
    for name in COOP_CLASSES:
        plugin = real.DATASETS[name]
        assert plugin.splits[-1] == real.COOP_TEST and plugin.splits[0] != real.COOP_TEST  # never the default
        assert plugin.coop.file.startswith("split_zhou_") and plugin.coop.url.startswith("https://drive.google.com/")
        assert plugin.coop.images.startswith(plugin.layout.folder)  # the same images as the other splits


@pytest.mark.parametrize("name", sorted(COOP_CLASSES))
def test_coop_split_serves_the_split_files_test_list(name, tmp_path):
    labels = coop_split(tmp_path, name)
    dataset = plugins().datasets.get(name).load(tmp_path, real.COOP_TEST)
    assert dataset.split == "coop-test" and dataset.num_classes == COOP_CLASSES[name]
    assert dataset.labels() == labels  # the test list, in the file's order
    names = [COOP_STYLE[name](k)[1].replace("_", " ") for k in range(COOP_CLASSES[name])]
    assert list(dataset.classnames) == names  # the file's names, label order, "_" written as space (CoOp's zsclip)
    side = NATIVE.get(name, real.VARIABLE_SIZE)  # the dataset's usual pixel convention
    for index in (0, 1, len(dataset) - 1):
        x, label = dataset[index]
        assert tuple(x.shape) == (3, side, side) and label == labels[index]
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(colour(label), dtype=torch.float32) / 255, atol=3 / 255)


def test_coop_split_without_its_file_fails_fast_with_what_to_do(tmp_path):
    dtd(tmp_path)
    coop_split(tmp_path, "dtd")
    (tmp_path / "coop_splits" / "split_zhou_DescribableTextures.json").unlink()
    assert real.DTD.load(tmp_path).split == "test"  # the other splits need no split file
    with pytest.raises(DatasetNotFoundError) as info:
        real.DTD.load(tmp_path, "coop-test")
    message = str(info.value)
    assert "\n" not in message and "split_zhou_DescribableTextures.json" in message and "coop-test" in message
    assert str(tmp_path / "coop_splits") in message and "drive.google.com" in message and "README" in message
    with pytest.raises(DatasetNotFoundError) as info:  # no images either: both what-to-dos in one line
        real.DTD.load(tmp_path / "elsewhere", "coop-test")
    message = str(info.value)
    assert "\n" not in message and "dtd/dtd not found" in message and "dtd-r1.0.1.tar.gz" in message
    assert "also get split_zhou_DescribableTextures.json" in message and str(tmp_path / "elsewhere" / "coop_splits") in message


def test_coop_split_with_missing_images_or_bad_labels_is_refused(tmp_path):
    coop_split(tmp_path, "eurosat")
    (tmp_path / "eurosat" / "2750" / "Class3" / "Class3_1.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of 11 images of split_zhou_EuroSAT.json's test list missing"):
        real.EUROSAT.load(tmp_path, "coop-test")
    split_file = tmp_path / "coop_splits" / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    split["val"] = [["x.jpg", 0, "Other name"]]
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetNotFoundError, match="label 0 is named both"):
        real.EUROSAT.load(tmp_path, "coop-test")
    split["val"] = []
    image(tmp_path / "eurosat" / "2750" / "Class3" / "Class3_1.jpg", 3, (64, 64))
    for dropped, error in ((3, r"labels are not 0\.\.8"), (9, "found 9 classes, expected 10")):
        kept = {key: [e for e in split[key] if e[1] != dropped] for key in ("train", "test")}
        split_file.write_text(json.dumps({**split, **kept}))
        with pytest.raises(DatasetNotFoundError, match=error):
            real.EUROSAT.load(tmp_path, "coop-test")


def test_class_names_come_from_the_files_where_the_format_has_them(tmp_path, no_md5):
    sun397(tmp_path)
    caltech256(tmp_path)
    tinyimagenet(tmp_path)
    ucf101(tmp_path)
    cifar100(tmp_path)
    load = lambda name: plugins().datasets.get(name).load(tmp_path)  # noqa: E731
    assert load("sun397").classnames[-1] == "balcony interior"
    names256 = load("caltech256").classnames
    assert names256[0] == "thing 0" and names256[3] == "baseball bat" and names256[-1] == "clutter"
    tiny = load("tinyimagenet")
    assert tiny.classnames[0] == "thing 0"  # labels follow the sorted synset ids, names the first synonym
    assert load("ucf101").classnames[1] == "Action B Thing1"
    assert load("cifar100").classnames[0] == "class 0"


def test_missing_dataset_fails_fast_with_what_to_do(tmp_path):
    for name, plugin in real.DATASETS.items():
        with pytest.raises(DatasetNotFoundError) as info:
            plugin.load(tmp_path)
        message = str(info.value)
        assert "\n" not in message and name in message and str(tmp_path) in message and "README" in message
        assert ("--download" in message) == plugin.can_download
    with pytest.raises(DatasetNotFoundError, match="no data root"):
        real.CIFAR10.load(None)


def test_incomplete_copy_is_refused(tmp_path):
    base = tmp_path / "imagenet-r"
    image(base / text.imagenet()["imagenet_r_wnids"][0] / "a.jpg", 0)  # one class folder of 200
    with pytest.raises(DatasetNotFoundError, match="199 of 200 class folders missing"):
        real.IMAGENET_R.load(tmp_path)


def test_unknown_split_is_refused(tmp_path):
    cifar10(tmp_path)
    with pytest.raises(Exception, match="has splits test, train"):
        real.CIFAR10.load(tmp_path, "val")


def test_download_only_where_the_loader_supports_it(tmp_path):
    assert not real.IMAGENET.can_download and not real.STANFORD_CARS.can_download and not real.UCF101.can_download
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded"):
        real.IMAGENET.download(tmp_path)
    assert real.CIFAR10.can_download and real.PCAM.can_download


def test_shipped_class_lists_have_their_documented_sizes():
    meta = text.imagenet()
    assert len(meta["wnids"]) == len(set(meta["wnids"])) == 1000 and meta["wnids"] == sorted(meta["wnids"])
    assert len(meta["classnames"]) == 1000
    assert len(meta["imagenet_r_wnids"]) == 200 and set(meta["imagenet_r_wnids"]) <= set(meta["wnids"])
    assert len(meta["imagenet_a_wnids"]) == 200 and set(meta["imagenet_a_wnids"]) <= set(meta["wnids"])
    sizes = {"caltech101": 101, "flowers102": 102, "oxford-pets": 37, "eurosat": 10, "country211": 211, "pcam": 2, "pcam-tecoa": 2}
    for list_name, size in sizes.items():
        assert len(text.classnames(list_name)) == size, list_name


@pytest.mark.parametrize("set_name", text.template_sets()[1:])
def test_every_template_renders(set_name):
    for dataset in real.DATASETS:
        templates, names = text.text_for(set_name, dataset)
        assert templates
        for template in templates:
            assert template.count("{}") == 1 and "{c}" not in template
            assert "CLASS" in template.format("CLASS")
        if names is not None:
            assert len(text.classnames(names)) == DOCUMENTED_CLASSES[dataset]


def test_template_sets_match_their_sources():
    assert len(text.text_for("clip_benchmark", "imagenet")[0]) == 80
    assert text.text_for("clip_benchmark", "imagenet-sketch") == text.text_for("clip_benchmark", "imagenet")
    assert text.text_for("tecoa", "cifar10") == (("This is a photo of a {}",), None)
    assert text.text_for("ttc", "cifar10") == (("This is a photo of a {}.",), None)
    assert text.text_for("ttc", "dtd") == text.text_for("tecoa", "dtd") == (("A surface with a {} texture.",), None)
    assert text.text_for("tecoa", "pcam")[1] == "pcam-tecoa"
    assert text.text_for("coop", "dtd")[0] == ("{} texture.",)
    assert text.text_for("coop", "ucf101")[0] == ("a photo of a person doing {}.",)


def test_with_templates_swaps_text_and_shares_items(tmp_path):
    pcam(tmp_path)
    dataset = real.PCAM.load(tmp_path)
    view = text.with_templates(dataset, "tecoa")
    assert view.templates == ("This is a photo of a {}.",)
    assert view.classnames == ("healthy lymph node tissue", "lymph node tumor tissue")
    assert dataset.classnames == text.classnames("pcam")  # the original is untouched
    assert torch.equal(view[1][0], dataset[1][0])
    assert text.with_templates(dataset, "dataset") is dataset
