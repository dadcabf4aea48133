"""Any dataset and the paper path from the command line: image folders, CIFAR-format roots,
quick budgets by rule, data roots, threads, bounded reference sets, terminal progress."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dashlib.config import ConfigError, DataConfig
from dashlib.data import balanced_subset, dataset_info, load_dataset

REPO = Path(__file__).resolve().parent.parent


def write_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 12,
                 mode: str = "RGB", seed: int = 0) -> Path:
    """One sub-folder of PNGs per class, images of varying (non-square) sizes."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(9, 21, size=2))
            pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, (h, w, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(folder / f"{i:03d}.png")
    return root


COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def dash(*args: str, cwd: Path, env_runs: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "DASH_RUNS": str(env_runs), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dashlib", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


# --- image folders -----------------------------------------------------------------------------

def test_image_folder_loads_resized_split_and_labelled(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), image_size=8,
                                   holdout_fraction=0.25))
    assert data.num_classes == 3 and data.class_names == ("blue", "green", "red")
    assert data.train.x.shape[1:] == (3, 8, 8) and len(data.train) + len(data.test) == 36
    assert data.train.x.min() >= -1 and data.train.x.max() <= 1
    assert torch.bincount(data.test.y).tolist() == [3, 3, 3]
    # colour survives: the red class is redder than the blue one
    mean = {c: data.train.x[data.train.y == c].mean((0, 2, 3)) for c in range(3)}
    red, blue = mean[2], mean[0]
    assert red[0] > blue[0] and blue[2] > red[2]


def test_grey_images_give_one_channel_and_channels_converts(tmp_path):
    root = write_folder(tmp_path / "grey", COLOURS, mode="L")
    assert dataset_info(DataConfig(name="imagefolder", data_root=str(root))).channels == 1
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), channels=3))
    assert data.channels == 3 and torch.equal(data.train.x[:, 0], data.train.x[:, 2])


def test_deep_grey_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    """16-bit PNGs and float TIFFs: PIL's convert("L") would clip them to white / black."""
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    for name, array, ext in [("deep", (ramp * 65535).astype(np.uint16), "png"),
                             ("float", ramp.astype(np.float32), "tiff")]:
        for c in ("a", "b"):
            (tmp_path / name / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(array).save(tmp_path / name / c / f"{i}.{ext}")
        assert dataset_info(DataConfig(name="imagefolder", data_root=str(tmp_path / name))).channels == 1
        data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / name), image_size=8,
                                       holdout_fraction=0.5))
        x = (data.train.x[0, 0] + 1) / 2  # back to [0, 1]
        assert torch.allclose(x.double(), torch.from_numpy(ramp), atol=1 / 255), name


def test_large_jpegs_decode_at_reduced_scale_close_to_a_full_decode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    import dashlib.imagefolder as imagefolder

    rng = np.random.default_rng(0)
    coarse = Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8))
    path = tmp_path / "photo.jpg"
    coarse.resize((1600, 1200), Image.Resampling.BICUBIC).save(path, quality=90)
    drafted = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = draft(self, mode, size)
        drafted.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = imagefolder._decode(str(path), 16, 3).astype(int)
    assert drafted[-1] == (200, 150)  # 1/8 scale: both sides still >= 2 x 16
    monkeypatch.setattr(imagefolder, "DRAFT_FACTOR", 10_000)  # asks for more than the photo: full size
    full = imagefolder._decode(str(path), 16, 3).astype(int)
    assert drafted[-1] == (1600, 1200) and fast.shape == full.shape == (3, 16, 16)
    assert np.abs(fast - full).mean() < 1 and np.abs(fast - full).max() <= 8


def test_decoding_on_two_threads_gives_the_same_images_in_the_same_order(tmp_path, monkeypatch):
    import dashlib.imagefolder as imagefolder

    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):  # a distinct solid grey per image, so any reordering shows
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((10 + i, 12, 3), 20 * i, np.uint8)).save(paths[-1])
    rng.shuffle(paths)
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK", 3)  # 4 chunks
    done = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = imagefolder.decode_all(paths, 8, 1, done.append)
        torch.set_num_threads(2)
        two = imagefolder.decode_all(paths, 8, 1)
    finally:
        torch.set_num_threads(threads)
    assert done == [3, 3, 3, 2]
    assert [int(a[0, 0, 0]) for a in two] == [int(Path(p).stem) * 20 for p in paths]
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("orientation, stored_as", [(1, None), (3, Image.Transpose.ROTATE_180),
                                                     (6, Image.Transpose.ROTATE_90),
                                                     (8, Image.Transpose.ROTATE_270)])
def test_photos_are_decoded_upright_by_their_exif_orientation(tmp_path, orientation, stored_as):
    import dashlib.imagefolder as imagefolder

    upright = np.zeros((24, 16, 3), np.uint8)
    upright[:8] = 255  # a tall image, white at the top
    stored = Image.fromarray(upright)
    stored = stored.transpose(stored_as) if stored_as is not None else stored  # as the camera wrote it
    exif = Image.Exif()
    exif[imagefolder.EXIF_ORIENTATION] = orientation
    stored.save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    x = imagefolder._decode(str(tmp_path / "photo.jpg"), 8, 1)[0].astype(int)
    assert x[0].min() > 200 and x[-1].max() < 30  # white top row, black bottom row, every column


def test_notebook_checkpoints_and_mac_zip_leftovers_are_not_classes_or_images(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    (root / ".ipynb_checkpoints").mkdir()  # JupyterLab leaves these in any folder it opens
    write_folder(root / "__MACOSX", {"red": (0, 0, 0)}, per_class=1)  # a zip made on a Mac
    for junk in ("red/._000.png", "blue/.DS_Store", "green/.hidden.png"):
        (root / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), holdout_fraction=0.25))
    assert data.class_names == ("blue", "green", "red") and len(data.train) + len(data.test) == 12


def test_image_folder_with_its_own_train_and_test_split(tmp_path):
    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=6)
    write_folder(tmp_path / "ds" / "test", COLOURS, per_class=2, seed=1)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    assert (len(data.train), len(data.test)) == (18, 6)


def test_a_train_folder_alone_is_the_class_folder_with_a_held_out_part(tmp_path):
    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=4)
    (tmp_path / "ds" / ".ipynb_checkpoints").mkdir()
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds"), holdout_fraction=0.25))
    assert data.class_names == ("blue", "green", "red") and (len(data.train), len(data.test)) == (9, 3)


def test_two_image_folders_of_the_same_shape_never_share_a_run_but_a_moved_one_does(tmp_path):
    import shutil

    from dashlib.classifier import classifier_run
    from dashlib.fidelity import reference_set
    from dashlib.presets import get_preset
    from dashlib.runs import run_id
    from dashlib.teacher import teacher_payload

    a = write_folder(tmp_path / "a", COLOURS, per_class=3)
    b = write_folder(tmp_path / "b", COLOURS, per_class=3, seed=1)  # same classes, other images
    shutil.copytree(a, tmp_path / "moved")  # copied: new modification times, same files

    def ids(root: Path) -> tuple[str, ...]:
        p = get_preset("tiny", **{"data.name": "imagefolder", "data.data_root": str(root)})
        return (run_id(teacher_payload(p)), classifier_run(p.data, p.eval).path.name,
                reference_set(p.data).name)

    first = ids(a)
    assert ids(tmp_path / "moved") == first
    assert all(x != y for x, y in zip(ids(b), first))
    write_folder(a, {"red": (0, 0, 0)}, per_class=4)  # one more red image
    assert all(x != y for x, y in zip(ids(a), first))


def test_images_of_the_same_names_and_sizes_but_other_pixels_are_another_folder(tmp_path):
    """Regenerated images in a fixed-size format (BMP, PPM, raw TIFF) keep every name and
    byte size: the fingerprint reads their bytes too."""
    from dashlib.imagefolder import folder_fingerprint

    rng = np.random.default_rng(0)
    for root in ("a", "b"):
        for name in ("cat", "dog"):
            (tmp_path / root / name).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / root / name / f"{i}.bmp")
    sizes = {p.stat().st_size for p in tmp_path.rglob("*.bmp")}
    assert len(sizes) == 1  # every file of the same size, in both folders
    assert folder_fingerprint(tmp_path / "a") != folder_fingerprint(tmp_path / "b")


@pytest.mark.parametrize("train, test", [("Train", "Test"), ("train", "valid"), ("training", "validation"),
                                         ("training", "testing")])
def test_split_folders_are_found_by_any_usual_name_in_any_case(tmp_path, train, test):
    write_folder(tmp_path / "ds" / train, COLOURS, per_class=5)
    write_folder(tmp_path / "ds" / test, COLOURS, per_class=2, seed=1)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    assert data.class_names == ("blue", "green", "red") and (len(data.train), len(data.test)) == (15, 6)


def test_a_split_folder_beside_other_folders_is_an_error_not_two_classes(tmp_path):
    from dashlib.imagefolder import split_folders

    write_folder(tmp_path / "a" / "train", COLOURS, per_class=3)
    (tmp_path / "a" / "extra").mkdir()
    with pytest.raises(FileNotFoundError, match="holds the split folder.s. train beside extra"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "a")))
    write_folder(tmp_path / "b" / "test", COLOURS, per_class=3)  # a test split without a train one
    with pytest.raises(FileNotFoundError, match="holds the split folder.s. test without a train folder"):
        split_folders(tmp_path / "b")
    for name in ("Train", "train", "test"):  # two train folders (a case-sensitive file system)
        write_folder(tmp_path / "e" / name, COLOURS, per_class=2)
    with pytest.raises(FileNotFoundError, match="split folder.s. Train, train, test with 2 train folders"):
        split_folders(tmp_path / "e")
    for name in ("train", "val", "test"):  # train/val/test: the test folder is the test split
        write_folder(tmp_path / "c" / name, COLOURS, per_class=2)
    assert split_folders(tmp_path / "c") == (tmp_path / "c" / "train", tmp_path / "c" / "test")
    # a class named like a split (CIFAR-100 has "train") holds images: it stays a class
    write_folder(tmp_path / "d", {"train": (200, 40, 40), "bus": (50, 60, 210), "test": (0, 0, 0)},
                 per_class=3)
    assert split_folders(tmp_path / "d") == (tmp_path / "d", None)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "d"), holdout_fraction=0.34))
    assert data.class_names == ("bus", "test", "train")


def test_a_test_folder_of_other_classes_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    from dashlib import imagefolder

    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=3)
    write_folder(tmp_path / "ds" / "test", {"red": (200, 40, 40), "Blue": (50, 60, 210)}, per_class=2)
    monkeypatch.setattr(imagefolder, "decode_all", lambda *a, **k: pytest.fail("decoded"))
    config = DataConfig(name="imagefolder", data_root=str(tmp_path / "ds"))
    with pytest.raises(FileNotFoundError, match=r"name different classes \(train/ only: \['blue', "
                       r"'green'\]; test/ only: \['Blue'\]; \['blue'\] differ in case only.*add the missing"):
        dataset_info(config)  # what every command checks first
    with pytest.raises(FileNotFoundError, match="name different classes"):
        load_dataset(config)  # and loading on its own (`dash evaluate --run`)


def test_one_image_per_class_is_enough_in_a_folder_that_has_its_own_test_split(tmp_path):
    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=3)
    write_folder(tmp_path / "ds" / "test", COLOURS, per_class=1)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    assert (len(data.train), len(data.test)) == (9, 3)
    write_folder(tmp_path / "one", COLOURS, per_class=1)  # without a test split: 2 (one held out)
    with pytest.raises(FileNotFoundError, match="has 1 image.s.; every class needs at least 2"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "one")))


def test_a_train_folder_given_itself_needs_two_images_per_class_whatever_lies_beside_it(tmp_path):
    """dash holds images out of a train/ folder given as --data-root, as of any folder without
    its own test split; a sibling test/ folder it never reads must not lower the minimum."""
    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=3)
    write_folder(tmp_path / "ds" / "train", {"grey": (90, 90, 90)}, per_class=1)
    write_folder(tmp_path / "ds" / "test", {**COLOURS, "grey": (90, 90, 90)}, per_class=1)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))  # a pair: 1 will do
    assert (len(data.train), len(data.test)) == (10, 4)
    with pytest.raises(FileNotFoundError, match="class 'grey' .* has 1 image.s.; every class needs at least"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds" / "train")))


def test_loose_images_beside_the_class_folders_of_a_split_are_named_in_the_error(tmp_path):
    write_folder(tmp_path / "ds" / "train", COLOURS, per_class=3)
    write_folder(tmp_path / "ds" / "test", COLOURS, per_class=1)
    Image.new("RGB", (10, 10)).save(tmp_path / "ds" / "train" / "thumb.jpg")
    with pytest.raises(FileNotFoundError, match=r"note: train/ holds class folders and 1 loose image\(s\) "
                                                r"\(thumb.jpg\), so it is read as a class"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    (tmp_path / "ds" / "test").rename(tmp_path / "elsewhere")  # train/ alone: one class, the same note
    with pytest.raises(FileNotFoundError, match=r"1 class folder.*note: train/ holds class folders"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))


def test_file_names_that_are_not_utf8_are_read_and_hashed_by_their_bytes(tmp_path):
    from dashlib.imagefolder import folder_fingerprint

    root = write_folder(tmp_path / "old zip", COLOURS, per_class=3)
    os.rename(os.fsencode(root / "red" / "000.png"), os.fsencode(root / "red") + b"/caf\xe9.png")
    os.rename(os.fsencode(root / "blue"), os.fsencode(root) + b"/\xe9t\xe9")  # a latin-1 class name
    before = folder_fingerprint(root)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root)))
    assert data.num_classes == 3 and "\udce9t\udce9" in data.class_names
    os.rename(os.fsencode(root / "red") + b"/caf\xe9.png", os.fsencode(root / "red") + b"/caf\xe8.png")
    assert folder_fingerprint(root) != before  # the name's bytes are part of the identity


def test_an_image_beyond_pils_size_limit_is_named_not_a_traceback(tmp_path, monkeypatch):
    import PIL.Image

    from dashlib.presets import get_preset

    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20)  # the 9-20 px sides exceed twice this
    with pytest.raises(FileNotFoundError, match="cannot read image .*exceeds limit.*remove or replace"):
        get_preset("tiny", **{"data.name": "imagefolder", "data.data_root": str(root)})
    with pytest.raises(FileNotFoundError, match="cannot read image .*exceeds limit"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root), channels=3))  # decoding too


def test_a_class_of_colour_images_among_grey_ones_makes_the_folder_colour(tmp_path):
    from dashlib.imagefolder import PEEK

    write_folder(tmp_path / "ds", {"a_grey": (90, 90, 90)}, per_class=3 * PEEK, mode="L")
    write_folder(tmp_path / "ds", {"b_colour": (200, 40, 40)}, per_class=3)
    assert dataset_info(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds"))).channels == 3


def test_a_broken_link_in_a_class_folder_is_not_an_image(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    (root / "red" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), holdout_fraction=0.34))
    assert len(data.train) + len(data.test) == 9


def test_a_symbolic_link_loop_in_a_class_folder_is_an_error_not_a_long_walk(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    (root / "red" / "again").symlink_to(root / "red")  # torchvision would list red/again/again/...
    with pytest.raises(FileNotFoundError, match=r"red/again links to a folder that contains it"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root)))
    (root / "red" / "again").unlink()
    (root / "red" / "up").symlink_to("..")  # noticed at red/up/red, one level past the link
    with pytest.raises(FileNotFoundError, match=r"pets/red/up links to a folder that contains it"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root)))


def test_a_folder_linked_twice_without_a_loop_is_listed_as_before(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    write_folder(tmp_path / "more", {"red": (200, 0, 0)}, per_class=2, seed=3)
    (root / "red" / "extra").symlink_to(tmp_path / "more" / "red")
    (root / "blue" / "extra").symlink_to(tmp_path / "more" / "red")
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), holdout_fraction=0.2))
    assert len(data.train) + len(data.test) == 9 + 2 + 2


def test_a_folder_far_larger_than_a_dataset_is_refused_before_it_is_listed(tmp_path, monkeypatch):
    from dashlib import imagefolder

    root = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    imagefolder.check_tree(root, limit=12)  # 3 classes x 4 images
    with pytest.raises(FileNotFoundError, match="more than 11 files and folders: is it the image folder"):
        imagefolder.check_tree(root, limit=11)
    monkeypatch.setattr(imagefolder, "MAX_ENTRIES", 11)
    with pytest.raises(FileNotFoundError, match="is it the image folder"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root)))


def test_a_large_holdout_leaves_every_class_an_image_to_train_on(tmp_path):
    root = write_folder(tmp_path / "pets", {"red": (200, 0, 0)}, per_class=12)
    write_folder(root, {"blue": (0, 0, 200)}, per_class=2)
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(root), holdout_fraction=0.9))
    assert torch.bincount(data.train.y).tolist() == [1, 1]  # blue: 1 of 2; red: 12 - round(10.8)
    assert torch.bincount(data.test.y).tolist() == [1, 11]


def test_evaluating_a_run_on_other_images_is_refused_and_on_the_moved_ones_accepted(tmp_path, monkeypatch,
                                                                                    capsys):
    import shutil

    from dashlib.cli import main

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    a = write_folder(tmp_path / "a", COLOURS, per_class=8)  # 2 test images a class: enough for the metrics
    b = write_folder(tmp_path / "b", COLOURS, per_class=8, seed=1)
    common = ["--preset", "tiny", "--set", "data.name=imagefolder", "--set", "train.steps=2",
              "--no-progress"]
    assert main(["train-teacher", *common, "--data-root", str(a)]) == 0
    teacher = next((tmp_path / "runs" / "tiny").glob("teacher-*"))
    shutil.move(a, tmp_path / "moved")
    assert main(["evaluate", "--run", str(teacher), "--data-root", str(b), "--n", "8", "--seeds", "1",
                 "--steps", "2", "--no-progress"]) == 2
    assert f"the images under {b} are not those {teacher} was trained on" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(teacher), "--data-root", str(tmp_path / "moved"), "--n", "8",
                 "--seeds", "1", "--steps", "2", "--w", "1", "--no-progress"]) == 0


def test_samples_of_a_run_name_its_classes_while_its_images_are_there(tmp_path, monkeypatch, capsys):
    import shutil

    from dashlib.cli import main

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    folder = write_folder(tmp_path / "pets", {"zebra": (0, 0, 0), "ant": (255, 255, 255),
                                              "Émeu": (90, 90, 90)}, per_class=4)
    assert main(["train-teacher", "--preset", "tiny", "--set", "data.name=imagefolder", "--set",
                 "train.steps=2", "--data-root", str(folder), "--no-progress"]) == 0
    teacher = next((tmp_path / "runs" / "tiny").glob("teacher-*"))
    sample = ["sample", "--run", str(teacher), "--n", "3", "--steps", "2", "--w", "2"]
    assert main([*sample, "--out", str(tmp_path / "s")]) == 0
    saved = torch.load(capsys.readouterr().out.strip().splitlines()[-1], weights_only=True)
    assert saved["class_names"] == ["ant", "zebra", "Émeu"] and saved["labels"].tolist() == [0, 1, 2]
    shutil.move(folder, tmp_path / "elsewhere")  # the labels still index the classes; no names to read
    assert main([*sample, "--out", str(tmp_path / "t")]) == 0
    moved = torch.load(capsys.readouterr().out.strip().splitlines()[-1], weights_only=True)
    assert moved["class_names"] is None


def test_sample_names_come_cheaply_or_not_at_all(tmp_path, monkeypatch):
    """Naming the classes never loads or downloads a dataset (MNIST names them only once loaded;
    a CIFAR run trained with --download whose files are gone is not fetched again)."""
    from types import SimpleNamespace

    import dashlib.data as data_module
    from dashlib.generate import model_class_names
    from dashlib.presets import get_preset

    def never(*args, **kwargs):
        raise AssertionError("loaded or downloaded a dataset to name its classes")

    def offline(name, config, train):  # torchvision's error for files that are not there
        if config.download:
            never()
        raise data_module.DataNotFoundError(f"{name} was not found")

    monkeypatch.setattr(data_module, "load_dataset", never)
    monkeypatch.setattr(data_module, "_open_torchvision", offline)
    model = SimpleNamespace(config=SimpleNamespace(num_classes=10))
    for name in ("mnist", "cifar10"):
        recorded = {"name": name, "data_root": str(tmp_path / "gone"), "download": True, "image_size": 32}
        artifact = SimpleNamespace(config={"data": recorded}, model=model)
        assert model_class_names(artifact, get_preset("digits")) is None


def test_running_dash_inside_the_image_folder_is_refused_before_it_writes_a_runs_class(tmp_path, monkeypatch,
                                                                                        capsys):
    """`--data-root .` from inside the folder used to train once, then read runs/ as a class."""
    from dashlib.cli import main

    folder = write_folder(tmp_path / "shapes", COLOURS, per_class=4)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DASH_RUNS", raising=False)  # runs/ in the working directory: inside it
    args = ["train-teacher", "--preset", "tiny", "--set", "data.name=imagefolder", "--data-root", ".",
            "--steps", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"dash's runs folder {folder / 'runs'} lies inside the image folder {folder}" in err
    assert "DASH_RUNS" in err and not (folder / "runs").exists()
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))  # outside: the same command works
    assert main(args) == 0


@pytest.mark.parametrize("splits", [("train", "test"), ("train",)])
def test_a_runs_folder_beside_the_split_folders_is_left_alone(tmp_path, monkeypatch, splits):
    """Only the class folders are read: dash's runs folder beside train/ (and test/) is neither
    a class nor a split, before the first command writes it and after."""
    from dashlib.cli import main

    root = tmp_path / "split"
    for split in splits:
        write_folder(root / split, COLOURS, per_class=4)
    monkeypatch.chdir(root)
    monkeypatch.delenv("DASH_RUNS", raising=False)
    common = ["train-teacher", "--preset", "tiny", "--set", "data.name=imagefolder", "--no-progress"]
    assert main([*common, "--data-root", ".", "--steps", "1"]) == 0 and (root / "runs").is_dir()
    assert main([*common, "--data-root", ".", "--steps", "2"]) == 0  # the runs folder is there now
    nested = root / "train" / "red" / "work"  # inside a class folder: refused
    nested.mkdir()
    monkeypatch.chdir(nested)
    assert main([*common, "--data-root", str(root), "--steps", "1"]) == 2


def test_image_folder_is_cached_and_reread_when_it_changes(tmp_path, monkeypatch):
    import dashlib.imagefolder as imagefolder

    root = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    config = DataConfig(name="imagefolder", data_root=str(root))
    first = load_dataset(config)
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(load_dataset(config).train.x, first.train.x)
    monkeypatch.undo()
    write_folder(root, {"yellow": (220, 220, 30)}, per_class=4)
    assert load_dataset(config).num_classes == 4


def test_an_image_folder_is_listed_once_per_split_until_it_changes(tmp_path, monkeypatch):
    import dashlib.imagefolder as imagefolder

    listed = []
    original = imagefolder._listing
    monkeypatch.setattr(imagefolder, "_listing", lambda folder: listed.append(folder) or original(folder))
    root = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    config = DataConfig(name="imagefolder", data_root=str(root))
    first = load_dataset(config)  # fingerprint, channels, classes and decoding all read the listing
    assert listed == [root.resolve()]
    load_dataset(config)
    assert len(listed) == 1
    write_folder(root, {"yellow": (220, 220, 30)}, per_class=4)
    assert load_dataset(config).num_classes == first.num_classes + 1
    assert len(listed) == 2


def test_a_truncated_image_cache_is_decoded_again_with_a_warning(tmp_path):
    root = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    config = DataConfig(name="imagefolder", data_root=str(root))
    first = load_dataset(config)
    caches = sorted((tmp_path / "runs" / "data-cache").glob("imagefolder-*.pt"))
    assert caches, "the decoded images were not cached"
    for cache in caches:  # a killed write or a full disk leaves a cut-off file
        cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable image cache"):
        again = load_dataset(config)
    assert torch.equal(again.train.x, first.train.x)
    with warnings.catch_warnings():  # rewritten: read without a warning
        warnings.simplefilter("error")
        assert load_dataset(config).num_classes == 3


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"), ("one class", "at least 2"), ("one image", "at least 2"),
    ("empty class", "'blue' .* has 0 image"),
])
def test_bad_image_folders_say_what_is_wrong(tmp_path, layout, message):
    root = tmp_path / "bad"
    if layout == "one class":
        write_folder(root, {"red": (200, 0, 0)}, per_class=3)
    elif layout == "one image":
        write_folder(root, {"red": (200, 0, 0)}, per_class=3)
        write_folder(root, {"blue": (0, 0, 200)}, per_class=1)
    elif layout == "empty class":
        write_folder(root, {"red": (200, 0, 0)}, per_class=3)
        (root / "blue").mkdir()
    with pytest.raises(FileNotFoundError, match=message):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root)))


def test_a_class_of_unread_formats_names_what_was_left_out(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    for i in range(3):  # GIFs are not among torchvision's image extensions
        Image.new("RGB", (10, 10), (0, 200, 0)).save(root / "green" / f"g{i}.gif")
    for name in ("000.png", "001.png"):
        (root / "green" / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\).*left out there: 3 \.gif.*convert"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(root)))


def test_files_left_out_are_said_when_the_images_are_decoded(tmp_path, monkeypatch, capsys):
    """GIFs among a class's PNGs were dropped without a word outside `dash info`."""
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    for i in range(2):
        Image.new("RGB", (10, 10), (0, 200, 0)).save(root / "green" / f"g{i}.gif")
    (root / "notes.txt").write_text("beside the classes")
    config = DataConfig(name="imagefolder", data_root=str(root))
    load_dataset(config)
    err = capsys.readouterr().err
    assert f"{root}: 3 file(s) left out" in err and "(2 .gif, 1 beside the class folders)" in err
    load_dataset(config)  # from the decode cache: said once
    assert "left out" not in capsys.readouterr().err


def test_an_undecodable_image_is_named_before_any_work(tmp_path):
    from dashlib.presets import get_preset

    root = write_folder(tmp_path / "pets", COLOURS, per_class=3)
    broken = sorted((root / "blue").iterdir())[0]  # the first one, which the channel check opens
    broken.write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match=f"cannot read image {broken}.*remove or replace"):
        get_preset("tiny", **{"data.name": "imagefolder", "data.data_root": str(root)})


def damaged_copies(tmp_path: Path):
    """Small PNG (RGB and 16-bit), PPM, PGM and palette-BMP files, each with one header byte
    overwritten in turn: the damage a copy or a disk leaves."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    sources = {"rgb.png": rgb, "grey16.png": Image.fromarray(rng.integers(0, 65535, (12, 10),
                                                                            dtype=np.uint16)),
               "rgb.ppm": rgb, "grey.pgm": rgb.convert("L"), "pal.bmp": rgb.convert("P")}
    for name, image in sources.items():
        image.save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        for at in range(min(48, len(data))):
            for value in (0x00, 0xC9, 0xFF):
                if data[at] != value:
                    broken = tmp_path / f"{at}-{value}-{name}"
                    broken.write_bytes(data[:at] + bytes([value]) + data[at + 1:])
                    yield broken


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # sizes the damage made up
def test_a_damaged_image_is_named_not_a_traceback(tmp_path):
    """PIL raises ValueError, SyntaxError and more for some damaged headers ("broken PNG
    file", "Truncated IHDR chunk", a bad PPM number, "invalid palette size"): each file either
    decodes or stops with the error naming it."""
    from dashlib.imagefolder import ImageFolderError, _decode

    named = 0
    for path in damaged_copies(tmp_path):
        for channels in (1, 3):
            try:
                assert _decode(str(path), 8, channels).shape == (channels, 8, 8)
            except ImageFolderError as err:
                assert f"cannot read image {path}" in str(err)
                named += 1
    assert named > 0


def test_preset_models_follow_the_data(tmp_path):
    from dashlib.presets import get_preset

    root = write_folder(tmp_path / "pets", COLOURS)
    p = get_preset("tiny", **{"data.name": "imagefolder", "data.data_root": str(root)})
    for model in (p.teacher, p.student):
        assert (model.num_classes, model.in_channels) == (3, 3)
    assert get_preset("tiny").teacher.num_classes == 4  # the registered preset is untouched


# --- the CIFAR python-pickle layout ---------------------------------------------------------------

@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_format_root_loads_without_torchvision_checksums(tmp_path, name, classes):
    from dashlib.cifar import write_cifar_root

    root = write_cifar_root(tmp_path, name, per_batch=20)
    data = load_dataset(DataConfig(name=name, data_root=str(root), image_size=32))
    assert data.num_classes == classes and data.train.x.shape[1:] == (3, 32, 32)
    assert set(data.train.y.tolist()) == set(range(classes))


def test_class_names_match_the_loaded_datasets_without_loading_them(tmp_path, monkeypatch):
    """F1 labels its rows by `class_names`: for CIFAR it reads the meta file, not 60k images."""
    from dashlib import data as data_module
    from dashlib.cifar import write_cifar_root
    from dashlib.data import class_names

    cifar = write_cifar_root(tmp_path, "cifar10", per_batch=20)
    folder = write_folder(tmp_path / "ds", COLOURS, per_class=2)
    configs = [DataConfig(name="digits"), DataConfig(name="synthetic", synthetic_classes=3),
               DataConfig(name="cifar10", data_root=str(cifar), image_size=32),
               DataConfig(name="imagefolder", data_root=str(folder))]
    loaded = [load_dataset(c).class_names for c in configs]
    monkeypatch.setattr(data_module, "load_dataset", lambda c: pytest.fail(f"{c.name} loaded"))
    assert [class_names(c) for c in configs] == loaded
    assert loaded[0] == tuple("0123456789") and loaded[1] == ("class0", "class1", "class2")
    assert loaded[3] == ("blue", "green", "red") and len(loaded[2]) == 10


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    from dashlib.cifar import write_cifar_root

    root = write_cifar_root(tmp_path, "cifar10", per_batch=20)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(FileNotFoundError, match="incomplete or damaged"):
        load_dataset(DataConfig(name="cifar10", data_root=str(root), image_size=32))
    assert not marker.exists()


def test_cifar_labels_outside_the_classes_are_refused_when_read(tmp_path):
    from dashlib.cifar import write_cifar_root

    root = write_cifar_root(tmp_path, "cifar10", per_batch=20)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch[b"labels"][0] = 10
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(FileNotFoundError, match="labels run from 0 to 10, outside the 10 classes 0-9"):
        load_dataset(DataConfig(name="cifar10", data_root=str(root), image_size=32))


def test_two_cifar_copies_of_other_content_never_share_a_run_and_a_moved_one_does(tmp_path):
    import shutil

    from dashlib.cifar import write_cifar_root
    from dashlib.presets import get_preset
    from dashlib.teacher import teacher_run

    def run_of(root):
        return teacher_run(get_preset("cifar10", **{"data.data_root": str(root)})).path

    a = write_cifar_root(tmp_path / "a", "cifar10", per_batch=20, seed=0)
    b = write_cifar_root(tmp_path / "b", "cifar10", per_batch=20, seed=1)
    assert run_of(a) != run_of(b)
    before = run_of(a)
    shutil.move(a, tmp_path / "moved")
    assert run_of(tmp_path / "moved") == before
    with pytest.raises(FileNotFoundError, match="cifar10 was not found under .*nowhere"):
        run_of(tmp_path / "nowhere")


def test_paper_path_starts_from_a_cifar_root_relative_to_the_caller(tmp_path):
    """The CIFAR path used to stop at notebook 00: the data root was taken relative to notebooks/."""
    from dashlib.cifar import write_cifar_root

    write_cifar_root(tmp_path / "data", "cifar10", per_batch=20)
    out = dash("reproduce", "--preset", "cifar10", "--data-root", "data", "--only", "00_quickstart",
               "--figures", str(tmp_path / "figs"), "--no-progress", "--threads", "1",
               cwd=tmp_path, env_runs=tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    nb = json.loads((tmp_path / "runs" / "cifar10" / "notebooks" / "00_quickstart.ipynb").read_text())
    text = json.dumps(nb["cells"])
    assert "35,751,939" in text or "35751939" in text  # the paper's teacher, at full size


def test_the_paper_path_without_inception_weights_stops_before_anything_trains(tmp_path, monkeypatch, capsys):
    """It used to train the teacher and every student, then fail in notebook 03 naming options
    `dash reproduce` does not take."""
    from dashlib.cifar import write_cifar_root
    from dashlib.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    write_cifar_root(tmp_path / "data", "cifar10", per_batch=20)
    common = ["reproduce", "--preset", "cifar10", "--data-root", "data", "--figures", "figs", "--no-progress"]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "Inception-v3 weights" in err and "--set eval.feature_extractor=classifier" in err
    assert "--set eval.inception_weights=FILE" in err and "--extractor" not in err
    assert not (tmp_path / "runs" / "cifar10").exists()
    (tmp_path / "weights.pth").write_text("not weights")  # named relative to the caller, and checked
    assert main([*common, "--set", "eval.inception_weights=weights.pth"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'weights.pth'} is not a PyTorch weights file" in err
    assert "--set eval.feature_extractor=classifier" in err and "--extractor" not in err
    assert main([*common, "--set", "eval.inception_weights=gone.pth"]) == 2
    assert f"--set eval.inception_weights={tmp_path / 'gone.pth'} does not exist" in capsys.readouterr().err
    from dashlib.reproduce import check_feature_space

    check_feature_space("cifar10", {}, ["00_quickstart", "01_teacher", "02_distillation"])  # score nothing
    with pytest.raises(FileNotFoundError, match="Inception-v3"):
        check_feature_space("cifar10", {}, ["08_claims"])
    check_feature_space("cifar10", {"eval.feature_extractor": "classifier"}, ["03_evaluation"])


# --- budgets, data roots, threads -------------------------------------------------------------------

def test_quick_budget_follows_a_rule_for_any_preset():
    from dashlib.config import override
    from dashlib.pipeline import budget
    from dashlib.presets import get_preset

    mine = override(get_preset("digits"), name="my-data", **{"train.steps": 5000, "distill.steps": 3000})
    full, quick = budget(mine, threads=1), budget(mine, quick=True, threads=1)
    assert quick.preset.train.steps == 1500 and quick.preset.distill.steps == 600
    assert quick.preset.eval.seeds == full.preset.eval.seeds[:1]
    assert quick.preset.eval.n_samples == full.preset.eval.n_samples // 2
    assert set(quick.preset.eval.sweep_steps) < set(full.preset.eval.sweep_steps)
    assert quick.widths == full.widths[:1]
    # overrides win over the rule
    assert budget(mine, quick=True, threads=1, overrides={"train.steps": 7}).preset.train.steps == 7


def test_budget_keys_unknown_or_bad_are_config_errors():
    from dashlib.pipeline import budget

    with pytest.raises(ConfigError, match="unknown budget setting"):
        budget("tiny", threads=1, overrides={"efficiency": 3})
    with pytest.raises(ConfigError, match="efficiency_batch"):
        budget("tiny", threads=1, overrides={"efficiency_batch": 0})
    with pytest.raises(ConfigError, match="dict"):
        budget("tiny", threads=1, overrides="train.steps=3")
    # one bare value is a list of one; an empty list and a bad name are errors, not tracebacks
    assert budget("tiny", threads=1, overrides={"widths": 8}).widths == (8,)
    assert budget("tiny", threads=1, overrides={"methods": "dash"}).methods == ("dash",)
    with pytest.raises(ConfigError, match="budget methods = \\[\\] is invalid"):
        budget("tiny", threads=1, overrides={"methods": []})
    with pytest.raises(ConfigError, match="budget methods \\[5\\] are unknown"):
        budget("tiny", threads=1, overrides={"methods": 5})


def test_relative_data_roots(tmp_path, monkeypatch):
    from dashlib.cli import build_parser, data_overrides
    from dashlib.pipeline import budget

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["reproduce", "--data-root", "data", "--download"])
    assert data_overrides(args) == {"data.data_root": str(tmp_path / "data"), "data.download": True}
    # a notebook run by hand: relative to the repository (as its runs_dir "../runs")
    b = budget("tiny", threads=1, overrides={"data.data_root": "data"})
    assert b.preset.data.data_root == str(REPO / "data")


def test_threads_default_and_set(monkeypatch):
    from dashlib.pipeline import budget
    from dashlib.threads import available_cores, default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == available_cores()
    assert budget("tiny", workers=2, threads=1).workers == 2  # workers are single-threaded processes
    assert torch.get_num_threads() == 1
    try:  # conftest already runs one thread: 2 shows the budget sets them
        budget("tiny", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ConfigError, match="threads"):
        budget("tiny", threads=0)


def test_more_threads_than_cores_are_capped_with_a_note(capsys, monkeypatch):
    from dashlib.threads import available_cores, use_threads

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after
    before = torch.get_num_threads()
    try:
        assert use_threads(1000) == available_cores() == torch.get_num_threads()
        assert f"more than the {available_cores()} cores" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_threads_option_on_every_command():
    from dashlib.cli import COMMANDS, build_parser

    parser = build_parser()
    for name in COMMANDS:
        assert "--threads" in parser._subparsers._group_actions[0].choices[name].format_help(), name


def test_dashlib_entry_point_cannot_be_shadowed_by_the_shell():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dash"] == scripts["dashlib"] == "dashlib.cli:console"


# --- evaluation memory and failures -------------------------------------------------------------------

def test_reference_set_is_capped_class_balanced_and_seeded():
    from dashlib.fidelity import reference_set

    data = DataConfig(name="synthetic", synthetic_size=400, synthetic_classes=4)
    a, b = reference_set(data, 100, seed=0), reference_set(data, 100, seed=0)
    c = reference_set(data, 100, seed=1)
    assert len(a.images) == 100 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.name != reference_set(data).name != c.name
    assert len(reference_set(data, 10_000).images) == len(load_dataset(data).train)


def test_an_imbalanced_train_split_gives_a_balanced_reference(tmp_path):
    """The samples are class-balanced: against a 3:1 split a perfect generator would score
    the label mix alone, so the reference takes the smallest class's count of each class."""
    from dashlib.fidelity import reference_set

    root = write_folder(tmp_path / "lopsided", {"red": COLOURS["red"]}, per_class=24)
    write_folder(root, {"blue": COLOURS["blue"]}, per_class=8)
    data = DataConfig(name="imagefolder", data_root=str(root), image_size=8)
    counts = load_dataset(data).train.y.bincount()
    assert counts[1] > 1.25 * counts[0]  # classes in name order: blue, red
    ref = reference_set(data)
    assert len(ref.images) == 2 * counts[0] and f"-bal{2 * counts[0]}s0" in ref.name
    assert len(reference_set(data, 10).images) == 10  # within max_reference
    even = DataConfig(name="synthetic", synthetic_size=400, synthetic_classes=4)
    assert "-bal" not in reference_set(even).name  # balanced splits are taken whole


def test_balanced_subset_takes_every_class_evenly():
    y = torch.tensor([0] * 90 + [1] * 8 + [2] * 30)
    keep = balanced_subset(y, 30, torch.Generator().manual_seed(0))
    assert torch.bincount(y[keep]).tolist() == [11, 8, 11]
    assert keep.unique().numel() == 30


def test_disabled_metrics_are_null_and_print_as_dash(tmp_path, tiny):
    from dashlib.commands.evaluate import _fmt
    from dashlib.evaluate import evaluate_runs
    from dashlib.teacher import train_teacher

    run = train_teacher(tiny, progress=False)
    config = tiny.eval.__class__(**{**tiny.eval.__dict__, "metrics": ("fid",), "seeds": (42, 123),
                                    "guidance": ("1",)})
    report = evaluate_runs([run], config, workers=1, progress=False)
    row = report.summary[0]
    assert row["fid_mean"] is not None and row["kid_mean_mean"] is None and row["isc_mean_mean"] is None
    assert _fmt(row["kid_mean_mean"], row["kid_mean_std"]) == "-"
    assert row["accuracy_mean"] is not None


def test_a_dead_worker_names_the_cell_and_the_likely_cause():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from dashlib.errors import EvaluationError
    from dashlib.evaluate import _worker_result

    class FakeTask:
        max_reference = 10_000

        def describe(self):
            return "teacher-abc at guidance tag, 20 DDIM steps, seed 42, 500 samples"

    future = Future()
    future.set_exception(BrokenProcessPool("a process terminated abruptly"))
    with pytest.raises(EvaluationError, match="teacher-abc at guidance tag.*memory.*max_reference"):
        _worker_result(future, FakeTask(), workers=2)


# --- terminal progress ---------------------------------------------------------------------------------

def test_watcher_reads_steps_from_run_logs(tmp_path):
    import time

    from dashlib.watch import scan

    since = time.time() - 1
    run = tmp_path / "tiny" / "distill-dash-123"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"distill": {"steps": 1000}}))
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in (25, 50)))
    cells = tmp_path / "tiny" / "teacher-1" / "eval" / "cells"
    cells.mkdir(parents=True)
    (cells / "a.json").write_text("{}")
    runs, n_cells = scan(tmp_path, since)
    assert [(r.name, r.step, r.total) for r in runs] == [("distill-dash-123", 50, 1000)]
    assert n_cells == 1
    assert scan(tmp_path, time.time() + 10) == ([], 0)


# --- your own data, end to end (the README's example) -------------------------------------------------

def test_readme_image_folder_example_runs_every_notebook(tmp_path):
    write_folder(tmp_path / "pets", COLOURS, per_class=16)
    out = dash("reproduce", "--preset", "tiny", "--set", "data.name=imagefolder", "--data-root", "pets",
               "--quick", "--figures", "figs", "--threads", "1", cwd=tmp_path, env_runs=tmp_path / "runs",
               timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = tmp_path / "figs" / "tiny-pets" / "quick"
    assert out.stdout.strip().splitlines()[-1] == str(figures / "README.md")
    for name in ("F1_samples.png", "F3_guidance_sweep.png", "T1_main_results.md", "T4_efficiency.md"):
        assert (figures / name).is_file(), name
    t1 = json.loads((figures / "T1_main_results.json").read_text())
    assert t1["quick"] is True and t1["preset"] == "tiny"
    assert "tiny-pets/notebooks-quick" in str(next((tmp_path / "runs").glob("tiny-pets/notebooks-quick/*")))


def test_two_image_folders_of_one_name_do_not_share_a_figures_folder(tmp_path):
    import shutil

    from dashlib.reproduce import ReproduceError, claim_figures_folder, figures_dir, resolve_overrides

    first = write_folder(tmp_path / "a" / "pets", COLOURS, per_class=4)
    other = write_folder(tmp_path / "b" / "pets", COLOURS, per_class=4, seed=1)

    def claim(root):
        overrides = resolve_overrides("tiny", {"data.name": "imagefolder", "data.data_root": str(root)})
        folder = figures_dir("tiny", False, tmp_path / "figs", overrides)
        claim_figures_folder(folder, "tiny", overrides)
        return folder

    folder = claim(first)
    assert folder.name == "tiny-pets" and (folder / "data.json").is_file()
    with pytest.raises(ReproduceError, match="same name but other images.*--figures"):
        claim(other)
    write_folder(first, {"red": COLOURS["red"]}, per_class=6, seed=2)  # images added: the same folder
    assert claim(first) == folder
    moved = tmp_path / "c" / "pets"
    shutil.copytree(first, moved)  # moved elsewhere: the same images
    assert claim(moved) == folder
    assert json.loads((folder / "data.json").read_text())["data_root"] == str(moved.resolve())


def test_any_registered_user_folder_source_is_treated_as_an_image_folder(tmp_path, monkeypatch):
    """The folder rules ask the dataset registry (`DatasetSource.user_folder`), not the name
    "imagefolder": a second source of users' folders gets the same naming, guard and size check."""
    import dataclasses

    from dashlib.config import ConfigError
    from dashlib.data import DATASETS, is_user_folder
    from dashlib.evaluate import check_reference_size
    from dashlib.presets import get_preset
    from dashlib.reproduce import claim_figures_folder, data_label, figures_dir, resolve_overrides

    monkeypatch.setitem(DATASETS._items, "my-folders", DATASETS.get("imagefolder"))
    assert is_user_folder("my-folders") and is_user_folder("imagefolder")
    assert not any(is_user_folder(n) for n in ("digits", "synthetic", "cifar10", "nope", None, 3))
    pets = write_folder(tmp_path / "pets", COLOURS, per_class=4)
    overrides = resolve_overrides("tiny", {"data.name": "my-folders", "data.data_root": str(pets)})
    assert data_label(overrides) == "-pets"
    folder = figures_dir("tiny", False, tmp_path / "figs", overrides)
    claim_figures_folder(folder, "tiny", overrides)
    assert folder.name == "tiny-pets" and (folder / "data.json").is_file()
    data = dataclasses.replace(get_preset("tiny").data, name="my-folders", data_root=str(pets))
    with pytest.raises(ConfigError, match="holds [0-9]+ images; the metrics need at least"):
        check_reference_size(dataclasses.replace(data, holdout_fraction=0.9))
    check_reference_size(data)  # 12 images, 3 held out: enough
    check_reference_size(dataclasses.replace(data, name="digits"))  # fixed size: never loaded


def test_an_image_folder_without_a_data_root_names_the_folder_it_reads(tmp_path, monkeypatch, capsys):
    from dashlib.cli import main

    write_folder(tmp_path / "data", COLOURS, per_class=4)
    monkeypatch.chdir(tmp_path)
    assert main(["info", "--preset", "tiny", "--set", "data.name=imagefolder"]) == 0
    assert f"no --data-root given: reading the image folder {tmp_path / 'data'}" in capsys.readouterr().err
    assert main(["info", "--preset", "tiny", "--set", "data.name=imagefolder", "--data-root", "data"]) == 0
    assert "no --data-root" not in capsys.readouterr().err


def test_a_linked_data_root_is_named_by_the_link(tmp_path, monkeypatch, capsys):
    """`--data-root pets` where pets is a symbolic link to a folder of another name: the
    figures folder is named as the user wrote it (`io.absolute`), from the command line
    (`cliargs.data_overrides`) and from a notebook run by hand (`resolve_overrides`)."""
    from dashlib.cli import build_parser
    from dashlib.cliargs import data_overrides
    from dashlib.reproduce import data_label, resolve_overrides

    target = write_folder(tmp_path / "store" / "a1b2c3", COLOURS, per_class=4)
    (tmp_path / "pets").symlink_to(target, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["info", "--preset", "tiny", "--set", "data.name=imagefolder",
                                      "--data-root", "pets"])
    overrides = data_overrides(args)
    assert overrides["data.data_root"] == str(tmp_path / "pets")
    assert data_label(overrides) == "-pets"
    by_hand = resolve_overrides("tiny", {"data.name": "imagefolder", "data.data_root": "pets"})
    assert data_label(by_hand) == "-pets"
    assert data_label({"data.name": "imagefolder", "data.data_root": "store/a1b2c3/../a1b2c3"}) == "-a1b2c3"
    from dashlib.io import absolute

    assert absolute("pets/..") == tmp_path / "store"  # the link target's parent, as the OS reads it


# --- a changed budget gets its own figures folder -------------------------------------------------

def test_a_changed_budget_never_writes_into_the_presets_own_figures(tmp_path):
    from dashlib.reproduce import figures_dir

    root = tmp_path / "figs"
    where = {"data.data_root": str(tmp_path / "elsewhere"), "data.download": True}
    assert figures_dir("digits", False, root, where) == root  # where the files are: same results
    assert figures_dir("digits", False, root, {"train.steps": 2500, "eval.seeds": [42, 123, 456]}) == root
    changed = figures_dir("digits", False, root, {"train.steps": 100})
    assert changed.parent == root and changed.name.startswith("digits-set-")
    assert figures_dir("digits", False, root, {"train.steps": 100, **where}) == changed
    assert figures_dir("digits", False, root, {"train.steps": 200}) != changed
    both = {"train.steps": 100, "eval.seeds": [1]}
    flipped = dict(reversed(both.items()))
    assert figures_dir("digits", False, root, both) == figures_dir("digits", False, root, flipped)
    assert figures_dir("digits", True, root, {"train.steps": 100}) == changed / "quick"
    pets = figures_dir("tiny", False, root, {"data.name": "imagefolder", "data.data_root": "/a/pets",
                                              "train.steps": 5})
    assert pets.name.startswith("tiny-pets-set-")


def test_a_relative_image_folder_names_its_outputs_by_the_folder(tmp_path, monkeypatch):
    from dashlib.reproduce import figures_dir, resolve_overrides

    write_folder(tmp_path / "pets", COLOURS, per_class=4)
    monkeypatch.chdir(tmp_path / "pets")
    given = {"data.name": "imagefolder", "data.data_root": "."}
    named = figures_dir("tiny", False, tmp_path / "figs", given)
    assert named.name == "tiny-pets"  # what `dash reproduce --data-root .` prints at the end
    assert named == figures_dir("tiny", False, tmp_path / "figs", resolve_overrides("tiny", given))


def test_reproduce_with_a_changed_budget_says_what_changed(tmp_path):
    out = dash("reproduce", "--preset", "tiny", "--set", "train.steps=3", "--only", "00_quickstart",
               "--figures", "figs", "--no-progress", "--threads", "1", cwd=tmp_path,
               env_runs=tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    figures = Path(out.stdout.strip().splitlines()[-1])  # the folder: 00 writes no figures index
    assert figures.parent == tmp_path / "figs" and figures.name.startswith("tiny-set-")
    assert json.loads((figures / "overrides.json").read_text()) == {
        "preset": "tiny", "overrides": {"train.steps": 3}}
    assert (tmp_path / "runs" / figures.name / "notebooks" / "00_quickstart.ipynb").is_file()


def test_an_interrupted_run_resumes_from_its_images_moved_elsewhere(tmp_path, interrupted_at):
    import shutil

    from dashlib.presets import get_preset
    from dashlib.teacher import train_teacher

    root = write_folder(tmp_path / "pets", COLOURS, per_class=6)
    budget = {"data.name": "imagefolder", "train.steps": 6, "train.ckpt_every": 2}
    with interrupted_at(3):
        train_teacher(get_preset("tiny", **budget, **{"data.data_root": str(root)}), progress=False)
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    run = train_teacher(get_preset("tiny", **budget, **{"data.data_root": str(moved)}), resume=True,
                        progress=False)
    assert run.finished and run.read_results()["steps"] == 6


def test_reproduce_prints_the_figures_folder_its_notebooks_write_to(tmp_path, monkeypatch, capsys):
    from dashlib import reproduce as reproduce_module
    from dashlib.cli import main

    monkeypatch.setattr(reproduce_module, "reproduce", lambda *args, **kwargs: [])  # no notebooks
    write_folder(tmp_path / "data", COLOURS, per_class=3)
    monkeypatch.chdir(tmp_path)  # the default data root, "data", is the caller's
    assert main(["reproduce", "--preset", "tiny", "--set", "data.name=imagefolder", "--quick",
                 "--figures", str(tmp_path / "figs")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "figs" / "tiny-data" / "quick")


def test_images_replaced_in_place_keeping_their_times_are_decoded_again(tmp_path):
    """rsync -a or an archive's extraction can bring other pixels of the same byte size with
    the old modification times: the decode cache reads the fingerprint too."""
    from dashlib import imagefolder

    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.bmp")
    config = DataConfig(name="imagefolder", data_root=str(root), holdout_fraction=0.34)
    first = load_dataset(config).train.x
    for path in sorted(root.rglob("*.bmp")):
        times = path.stat()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    imagefolder._fingerprint.cache_clear()  # as a new process would
    assert not torch.equal(load_dataset(config).train.x, first)


def test_budgets_keep_dash_and_evaluate_what_their_tables_and_figures_read():
    from dashlib.pipeline import budget

    with pytest.raises(ConfigError, match="leave out dash"):
        budget("tiny", threads=1, overrides={"methods": ["cond-only", "scratch"]})
    quick = budget("digits", quick=True, threads=1, overrides={"sample.guidance": "constant"})
    assert quick.table_guidance in quick.sweep_guidance  # T1 reads it from the sweep's report
    assert quick.preset.eval.ddim_steps in quick.sweep_steps  # F7's teacher line
    full = budget("digits", threads=1)
    assert full.sweep_guidance == full.preset.eval.sweep_guidance  # unchanged where nothing lacked
    assert full.sweep_steps == full.preset.eval.sweep_steps


def test_two_names_of_one_run_are_reported_under_both_and_counted_once():
    from dashlib.evaluate import EvalReport
    from dashlib.pipeline import named
    from dashlib.runs import Run

    rows = [{"run": "/r/a", "method": "dash", "seed": s} for s in (1, 2)]
    summary = [{"run": "/r/a", "method": "dash", "seeds": [1, 2]}]
    runs = {"+TIRT (DASH)": Run(Path("/r/a")), "DASH - L_an": Run(Path("/r/a"))}
    out = named(EvalReport(rows, summary, {}), runs)
    assert [r["method"] for r in out.summary] == ["+TIRT (DASH)", "DASH - L_an"]
    assert [(r["method"], r["seed"]) for r in out.rows] == [
        ("+TIRT (DASH)", 1), ("+TIRT (DASH)", 2), ("DASH - L_an", 1), ("DASH - L_an", 2)]
    assert all(r["seeds"] == [1, 2] for r in out.summary)


def test_a_budget_the_notebooks_cannot_finish_is_refused_before_training():
    from dashlib.pipeline import budget

    with pytest.raises(ConfigError, match="leaves out fid"):
        budget("tiny", overrides={"eval.metrics": ["isc", "kid"]})
    with pytest.raises(ConfigError, match="efficiency_steps = 150 is more than the 100"):
        budget("tiny", overrides={"efficiency_steps": 150})
    assert budget("tiny", overrides={"eval.metrics": ["fid"]}).preset.eval.metrics == ("fid",)
    with pytest.raises(ConfigError, match="max_reference = 6 is too small.*at least 8"):
        budget("tiny", overrides={"data.synthetic_classes": 8, "eval.max_reference": 6})


def test_evened_takes_the_smallest_class_count_of_each_class_only_where_imbalanced():
    from dashlib.fidelity import evened

    y = torch.tensor([0] * 30 + [1] * 9 + [2] * 12)
    keep = evened(y, seed=0)
    assert y[keep].bincount().tolist() == [9, 9, 9] and torch.equal(keep, keep.sort().values)
    assert len(evened(y, at_most=6, seed=0)) == 6
    assert evened(torch.tensor([0] * 10 + [1] * 12)) is None  # 1.2x: taken as it is
    assert evened(torch.tensor([0] * 9 + [1] * 2)) is None  # 4 rows: fewer than the metrics need


def test_sample_grids_enlarge_only_small_images(tmp_path):
    from dashlib.images import grid_scale, save_grid

    assert (grid_scale(8), grid_scale(12), grid_scale(16), grid_scale(128)) == (4, 4, 1, 1)
    samples, labels = torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    with Image.open(save_grid(samples, labels, 2, tmp_path / "grid.png")) as im:
        assert im.size[0] < 2 * (32 + 2) + 10  # two per row at 1x, not 4x


def test_an_image_folder_too_small_to_score_is_refused_before_any_training(tmp_path):
    from dashlib.pipeline import budget

    root = write_folder(tmp_path / "few", COLOURS, per_class=2)  # 3 train images once 3 are held out
    with pytest.raises(ConfigError, match="reference set .* holds 3 images; the metrics need at least 5"):
        budget("tiny", overrides={"data.name": "imagefolder", "data.data_root": str(root)})


def test_one_grouping_folder_of_classes_is_named_as_the_root_meant(tmp_path):
    """DIR/animals/<class>/... read from DIR is one class, "animals"; the error used to stop
    there, without saying that animals/ holds the classes."""
    root = write_folder(tmp_path / "ds" / "animals", COLOURS, per_class=2)
    with pytest.raises(FileNotFoundError, match=r"holds 1 class folder.*note: animals/ holds 3 folders "
                       r"\(blue, green, red\) and no images of its own: if those are the classes, "
                       r"pass --data-root .*ds/animals$"):
        dataset_info(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    assert dataset_info(DataConfig(name="imagefolder", data_root=str(root))).num_classes == 3
    from PIL import Image

    Image.new("RGB", (9, 9)).save(root / "loose.png")  # images of its own: a class, no note
    with pytest.raises(FileNotFoundError, match="holds 1 class folder") as err:
        dataset_info(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds")))
    assert "if those are the classes" not in str(err.value)


def test_info_lists_an_image_folders_classes_in_label_order(tmp_path, monkeypatch, capsys):
    import json

    from dashlib.cli import main

    write_folder(tmp_path / "ds", {"0": (9, 9, 9), "10": (90, 9, 9), "2": (9, 90, 9)}, per_class=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    assert main(["info", "--preset", "tiny", "--set", "data.name=imagefolder", "--data-root", "ds"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == ["0", "10", "2"] and info["num_classes"] == 3  # label 1 is folder "10"
    assert "image folder" in info["description"] and "synthetic" not in info["description"]  # not tiny's data
    from dashlib.data import class_names

    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds"), holdout_fraction=0.5))
    assert class_names(DataConfig(name="imagefolder", data_root=str(tmp_path / "ds"))) == data.class_names
    red = [float(data.train.x[data.train.y == k][:, 0].mean()) for k in range(3)]
    assert red.index(max(red)) == 1  # label 1 holds folder "10"'s (red) images
    assert main(["info", "--preset", "tiny"]) == 0
    assert "classes" not in json.loads(capsys.readouterr().out)


def test_info_counts_what_an_image_folder_holds_that_is_not_read(tmp_path):
    from dashlib.imagefolder import left_out

    root = write_folder(tmp_path / "ds", COLOURS, per_class=2)
    assert left_out(root) == {}
    (root / "red" / "notes.txt").write_text("x")
    (root / "red" / "anim.gif").write_bytes(b"GIF89a")
    (root / "blue" / "LICENSE").write_text("x")
    (root / "stray.png").write_bytes(b"")
    (root / "red" / ".DS_Store").write_text("x")  # hidden: never counted
    assert left_out(root) == {"(none)": 1, ".gif": 1, ".txt": 1, "beside the class folders": 1}
    (root / "blue" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert left_out(root)["broken link"] == 1
    split = tmp_path / "split"
    for name in ("train", "test", "val"):
        write_folder(split / name, COLOURS, per_class=1)
    (split / "labels.csv").write_text("x")
    assert left_out(split) == {"beside the split folders": 1, "unused folder val": 1}


def test_a_notebook_takes_relative_and_default_data_roots_against_the_repository(tmp_path, monkeypatch):
    """Run by hand (working directory notebooks/), a notebook read an image folder's default
    root as notebooks/data and 08_claims a relative root against notebooks/, while the other
    notebooks took a relative one against the repository; now every one does."""
    from dashlib import pipeline
    from dashlib.data import DataNotFoundError

    repo = tmp_path / "repo"
    write_folder(repo / "data", COLOURS, per_class=4)
    write_folder(repo / "pets", COLOURS, per_class=4)
    (repo / "notebooks").mkdir()
    monkeypatch.setattr(pipeline, "REPOSITORY", repo)
    monkeypatch.chdir(repo / "notebooks")
    folder = {"data.name": "imagefolder"}
    assert pipeline.notebook_overrides("tiny", folder)["data.data_root"] == str(repo / "data")
    def root(given: str) -> str:
        return pipeline.notebook_overrides("tiny", {**folder, "data.data_root": given})["data.data_root"]

    assert root("pets") == str(repo / "pets") and root(str(tmp_path)) == str(tmp_path)  # absolute: as given
    assert pipeline.notebook_overrides("tiny", {}) == {}  # synthetic data: no root to read
    with pytest.raises(DataNotFoundError, match=r"'\.\./\.\./pets' does not exist as .*: a notebook takes a "
                       r"relative data root against the repository"):
        pipeline.notebook_overrides("tiny", {**folder, "data.data_root": "../../pets"})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    assert pipeline.budget("tiny", overrides=folder).preset.data.data_root == str(repo / "data")
