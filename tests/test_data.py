"""Behaviour of genlab.data: preparing each kind of dataset, verification, and what failures leave behind."""

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

from genlab.config.experiment import config_from_dict
from genlab.core.errors import ConfigError, DataError
from genlab.data import IMAGES_FILE, MANIFEST_FILE, PreparedData, image_folder, load_prepared, prepare, prepared
from genlab.data.prepared import FORMAT_VERSION, LABELS_FILE, Rows, write_prepared
from genlab.data.splits import Split

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "datasets" / "mnist"
MNIST_MD5 = dict(torchvision.datasets.MNIST.resources)
needs_mnist = pytest.mark.skipif(
    not MNIST_DIR.is_dir(), reason=f"real MNIST mirror not found at {MNIST_DIR} (the four official .gz files)"
)


def _cfg(**data):
    seed = data.pop("seed", 0)
    return config_from_dict({"seed": seed, "data": data})


def _prepared(tmp_path, out="out", **data) -> PreparedData:
    prepare(_cfg(**data), tmp_path / out)
    return load_prepared(tmp_path / out)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_mnist_mirror(folder: Path, corrupt: str | None = None, missing: str | None = None) -> Path:
    folder.mkdir()
    for name in MNIST_MD5:
        if name == missing:
            continue
        if name == corrupt:
            (folder / name).write_bytes(b"not the official file")
        else:
            shutil.copyfile(MNIST_DIR / name, folder / name)
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _http_mirror(directory: Path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy from the environment must not intercept localhost
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- digits -------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_values_and_split_sizes(tmp_path):
    data = _prepared(tmp_path)
    assert data.max_value == 16 and data.levels == 17 and data.image_shape == (1, 8, 8)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 8, 8) and split.images.shape[0] == len(split)
        assert int(split.images.max()) <= 16 and int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
    assert max(int(s.images.max()) for s in (data.train, data.val, data.test)) == 16  # not rescaled
    sizes = data.manifest["split_sizes"]
    assert sizes == {"train": 1294, "val": 144, "test": 359}  # test round(0.2 * 1797), val round(0.1 * 1438)
    assert sum(sizes.values()) == 1797


def test_digits_splits_partition_the_dataset_exactly(tmp_path):
    data = _prepared(tmp_path)
    digits = load_digits()
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    assert torch.equal(torch.bincount(labels), torch.from_numpy(np.bincount(digits.target)))
    original = sorted(map(bytes, digits.images.astype(np.uint8).reshape(len(digits.images), -1)))
    assert sorted(map(bytes, images.reshape(len(images), -1).numpy())) == original


def test_digits_same_seed_is_identical_and_other_seed_differs(tmp_path):
    first, again = _prepared(tmp_path, out="a", seed=3), _prepared(tmp_path, out="b", seed=3)
    other = _prepared(tmp_path, out="c", seed=4)
    assert first.checksum == again.checksum
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name).images, getattr(again, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(again, name).labels)
    assert first.checksum != other.checksum
    assert not torch.equal(first.test.images, other.test.images)
    assert not torch.equal(first.val.labels, other.val.labels)


def test_data_limit_keeps_a_seeded_subset_of_each_split_and_says_so(tmp_path):
    full = _prepared(tmp_path, out="full")
    small, again = _prepared(tmp_path, out="a", limit=200), _prepared(tmp_path, out="b", limit=200)
    assert small.manifest["split_sizes"] == {"train": 200, "val": 144, "test": 200}  # val had fewer: all of it
    assert small.manifest["limit"] == 200 and full.manifest["limit"] is None
    assert small.checksum == again.checksum and small.checksum != full.checksum
    for name in ("train", "test"):  # a subset of the split it caps, in the split's order
        part, whole = getattr(small, name), getattr(full, name)
        rows = {bytes(x.numpy()): i for i, x in enumerate(whole.images.reshape(len(whole), -1))}
        found = [rows[bytes(x.numpy())] for x in part.images.reshape(len(part), -1)]
        assert found == sorted(found) and len(set(found)) == 200
    assert torch.equal(small.val.images, full.val.images)
    assert len(torch.unique(small.train.labels)) == 10  # 200 of 1294 digits still hold every class
    with pytest.raises(ConfigError, match=r"data\.limit.*\[10, 100000\]"):
        _cfg(limit=5)


def test_to_unit_maps_max_value_to_one(tmp_path):
    data = _prepared(tmp_path)
    unit = data.to_unit(data.train.images)
    assert unit.dtype == torch.float32 and unit.shape == data.train.images.shape
    assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0
    assert torch.equal(unit * 16, data.train.images.float())


def test_prepared_files_are_flat_arrays_with_a_complete_manifest(tmp_path):
    manifest = prepare(_cfg(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [IMAGES_FILE, LABELS_FILE, MANIFEST_FILE]
    images, labels = (tmp_path / IMAGES_FILE).read_bytes(), (tmp_path / LABELS_FILE).read_bytes()
    assert manifest["prepared_md5"] == hashlib.md5(images + labels).hexdigest()
    data = load_prepared(tmp_path)
    assert data.manifest == manifest
    # train, val, test back to back: the first train image and the last test image are the file's ends
    flat = torch.frombuffer(bytearray(images), dtype=torch.uint8).view(-1, *manifest["image_shape"])
    assert torch.equal(flat, torch.cat([data.train.images, data.val.images, data.test.images]))
    splits = (data.train, data.val, data.test)
    assert torch.equal(torch.frombuffer(bytearray(labels), dtype=torch.int64), torch.cat([s.labels for s in splits]))
    for key in (
        "dataset",
        "source",
        "source_md5",
        "max_value",
        "image_shape",
        "split_sizes",
        "seed",
        "val_fraction",
        "test_fraction",
        "format_version",
    ):
        assert key in manifest, key
    assert manifest["image_shape"] == [1, 8, 8] and manifest["seed"] == 0 and manifest["test_fraction"] == 0.2


def test_prepare_guards_unknown_dataset_names(tmp_path):
    cfg = _cfg()
    bogus = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="svhn"))
    with pytest.raises(DataError, match="svhn.*digits"):
        prepare(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- MNIST through data.mirror ------------------------------------------------------------------


def _check_real_mnist(tmp_path, mirror):
    manifest = prepare(_cfg(name="mnist", root=str(tmp_path / "raw"), mirror=mirror), tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
    assert len(data.val) == 6000 and data.image_shape == (1, 28, 28) and data.max_value == 255
    assert data.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert manifest["source_md5"] == MNIST_MD5
    return manifest


@needs_mnist
def test_mnist_from_a_directory_mirror(tmp_path):
    manifest = _check_real_mnist(tmp_path, str(MNIST_DIR))
    assert manifest["source"] == str(MNIST_DIR.resolve()) and manifest["test_fraction"] is None


@needs_mnist
def test_mnist_from_a_url_mirror_goes_through_torchvision_download(tmp_path, monkeypatch):
    with _http_mirror(MNIST_DIR, monkeypatch) as url:
        manifest = _check_real_mnist(tmp_path, url)
    assert manifest["source"] == url


@needs_mnist
@pytest.mark.parametrize("kind", ["directory", "url"])
def test_mirror_md5_mismatch_names_file_and_both_md5s_and_drops_the_file(tmp_path, monkeypatch, kind):
    bad = "t10k-labels-idx1-ubyte.gz"
    mirror = _fake_mnist_mirror(tmp_path / "mirror", corrupt=bad)
    got = hashlib.md5((mirror / bad).read_bytes()).hexdigest()
    with contextlib.ExitStack() as stack:
        location = str(mirror) if kind == "directory" else stack.enter_context(_http_mirror(mirror, monkeypatch))
        with pytest.raises(DataError) as err:
            prepare(_cfg(name="mnist", root=str(tmp_path / "raw"), mirror=location), tmp_path / "out")
    assert bad in str(err.value) and MNIST_MD5[bad] in str(err.value) and got in str(err.value)
    raw = tmp_path / "raw" / "MNIST" / "raw"
    assert not (raw / bad).exists() and not list(raw.glob(".*"))
    assert not (tmp_path / "out").exists()


def test_mirror_missing_a_file_names_it_and_the_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNIST_MD5:
        if name != "train-labels-idx1-ubyte.gz":
            (mirror / name).write_bytes(b"never read: the missing file is reported first")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz") as err:
        prepare(_cfg(name="mnist", root=str(tmp_path / "raw"), mirror=mirror.as_uri()), tmp_path / "out")
    assert str(mirror) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_download_failure_without_mirror_explains_data_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [(tmp_path / "unreachable").as_uri() + "/"])
    with pytest.raises(DataError) as err:
        prepare(_cfg(name="mnist", root=str(tmp_path / "raw")), tmp_path / "out")
    message = str(err.value)
    assert "data.mirror" in message and "failed" in message and "train-images-idx3-ubyte.gz" in message
    assert not any(p.is_file() for p in (tmp_path / "raw").rglob("*"))
    assert not (tmp_path / "out").exists()


# --- failures leave earlier results alone --------------------------------------------------------


@pytest.mark.parametrize("failing", ["mirror_missing_files", "empty_image_folder"])
def test_failing_prepare_leaves_a_previous_good_dataset_untouched(tmp_path, failing):
    out = tmp_path / "out"
    prepare(_cfg(), out)
    before = _snapshot(out)
    (tmp_path / "empty").mkdir()
    data = {
        "mirror_missing_files": {"name": "mnist", "root": str(tmp_path / "raw"), "mirror": str(tmp_path / "empty")},
        "empty_image_folder": {"name": "image_folder", "path": str(tmp_path / "empty")},
    }[failing]
    with pytest.raises(DataError):
        prepare(_cfg(**data), out)
    assert _snapshot(out) == before
    load_prepared(out)


def test_load_prepared_rejects_corrupted_or_missing_files(tmp_path):
    prepare(_cfg(), tmp_path)
    for name in (IMAGES_FILE, LABELS_FILE):
        path, good = tmp_path / name, (tmp_path / name).read_bytes()
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
        with pytest.raises(DataError, match=r"corrupted: md5.*dvc repro download"):
            load_prepared(tmp_path)
        path.write_bytes(good[:-1])
        short = rf"{name} has {len(good) - 1} bytes.*implies {len(good)}.*dvc repro download"
        with pytest.raises(DataError, match=short):
            load_prepared(tmp_path)
        path.unlink()
        with pytest.raises(DataError, match=rf"{name}.*missing.*dvc repro download"):
            load_prepared(tmp_path)
        path.write_bytes(good)
    load_prepared(tmp_path)
    (tmp_path / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match=rf"{MANIFEST_FILE}.*missing.*dvc repro download"):
        load_prepared(tmp_path)


# --- image_folder -------------------------------------------------------------------------------

COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def _image_folder(root: Path) -> Path:
    for cls, color in COLORS.items():
        (root / cls / "nested").mkdir(parents=True)
        for i in range(5):
            where = root / cls / ("nested" if i == 4 else "") / f"{i}.png"
            Image.new("RGB", (20 + i, 12), color).save(where)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_labels_resize_and_channels(tmp_path, channels):
    folder = _image_folder(tmp_path / "images")
    data = _prepared(
        tmp_path, path=str(folder), name="image_folder", image_size=6, channels=channels, skip_unreadable=True
    )
    assert data.image_shape == (channels, 6, 6) and data.max_value == 255
    assert data.manifest["classes"] == ["cat", "dog"]
    assert data.manifest["skipped_files"] == {"dog/broken.png": "not an image Pillow can read"}
    assert len(data.manifest["source_md5"]) == 10
    assert data.manifest["split_sizes"] == {"train": 7, "val": 1, "test": 2}
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    assert torch.bincount(labels).tolist() == [5, 5]
    for image, label in zip(images, labels):
        color = COLORS[["cat", "dog"][label]]
        expected = [round(0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2])] if channels == 1 else color
        assert [int(v) for v in image.flatten(1).float().mean(1).round()] == list(expected)


def test_image_folder_without_subfolders_is_one_class(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(4):
        Image.new("L", (8, 9), 40 * i).save(tmp_path / "flat" / f"{i}.png")
    data = _prepared(tmp_path, path=str(tmp_path / "flat"), name="image_folder", image_size=4)
    assert data.image_shape == (1, 4, 4)
    assert torch.cat([data.train.labels, data.val.labels, data.test.labels]).tolist() == [0, 0, 0, 0]


def _folder_means(tmp_path, images: list[Image.Image], channels: int) -> list[list[int]]:
    """Prepare a flat folder of uniform images; each image's per-channel mean, sorted."""
    (tmp_path / "flat").mkdir()
    for i, image in enumerate(images):
        image.save(tmp_path / "flat" / f"{i}.png")
    data = _prepared(tmp_path, path=str(tmp_path / "flat"), name="image_folder", image_size=4, channels=channels)
    images_u8 = torch.cat([data.train.images, data.val.images, data.test.images])
    return sorted(image.flatten(1).float().mean(1).round().int().tolist() for image in images_u8)


def test_image_folder_rescales_16_bit_greyscale_instead_of_clipping(tmp_path):
    values = [0, 50 * 257, 30000, 65535]
    pngs = [Image.fromarray(np.full((8, 8), v, dtype=np.uint16)) for v in values]
    assert _folder_means(tmp_path, pngs, channels=1) == [[0], [50], [117], [255]]  # round(v / 257)
    with Image.open(tmp_path / "flat" / "1.png") as written:
        assert written.mode == "I;16"  # the files really are 16-bit


def test_image_folder_composites_transparency_onto_white(tmp_path):
    images = [
        Image.new("RGBA", (8, 8), (0, 0, 255, 0)),  # transparent blue: only the background shows
        Image.new("RGBA", (8, 8), (255, 0, 0, 255)),  # opaque red: unchanged
        Image.new("RGBA", (8, 8), (0, 0, 0, 128)),  # half-transparent black over white: mid grey
        Image.new("LA", (8, 8), (0, 0)),  # transparent grey
    ]
    assert _folder_means(tmp_path, images, channels=3) == [
        [127, 127, 127],
        [255, 0, 0],
        [255, 255, 255],
        [255, 255, 255],
    ]


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _file_bytes(frames: list[Image.Image], format: str) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, format=format, save_all=len(frames) > 1, append_images=frames[1:])
    return out.getvalue()


def _uint32_tiff(values: np.ndarray) -> bytes:
    """A TIFF of unsigned 32-bit pixels: Pillow writes its 'I' mode as signed, so its SampleFormat is patched."""
    signed = _file_bytes([Image.fromarray(values.astype(np.uint32).view(np.int32))], "TIFF")
    sample_format_signed = b"\x53\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # tag 339, SHORT, 1 value: 2
    assert signed.count(sample_format_signed) == 1
    return signed.replace(sample_format_signed, sample_format_signed[:-2] + b"\x01\x00")


def _symlink_to(target: str):
    """A BAD_INPUTS maker: a symlink to target, relative to the image folder."""
    return lambda folder, path: path.symlink_to(folder / target)


def _frames(*values: int) -> list[Image.Image]:
    return [Image.new("L", (10, 10), v) for v in values]


# name: (path in the image folder, its content (bytes, a maker or None: see below), why, listed in the manifest as)
BAD_INPUTS = {
    "not an image": ("cat/broken.png", b"not a png", "not an image Pillow can read", None),
    "truncated": ("cat/cut.png", _png_bytes(Image.new("L", (64, 64), 9).rotate(30))[:-40], "truncated", None),
    "1x1": ("cat/pixel.png", _png_bytes(Image.new("L", (1, 1), 9)), "1x1 pixels, under 8 a side", None),
    "bomb": ("cat/huge.png", None, "decompression-bomb limit", None),
    "empty class": ("bird/readme.txt", b"no images here", "bird/ (no usable image)", "bird/"),
    "float above 1": (
        "cat/float.tif",
        _file_bytes([Image.fromarray(np.full((10, 10), 200.5, np.float32))], "TIFF"),
        "32-bit float pixels from 200.5 to 200.5, outside [0, 1]",
        None,
    ),
    "float NaN": (
        "cat/nan.tif",
        _file_bytes([Image.fromarray(np.full((10, 10), np.nan, np.float32))], "TIFF"),
        "32-bit float pixels from nan to nan, outside [0, 1]",
        None,
    ),
    "signed 32-bit": (
        "cat/signed.tif",
        _file_bytes([Image.fromarray(np.full((10, 10), 1000, np.int32))], "TIFF"),
        "signed 32-bit integer pixels",
        None,
    ),
    "animated GIF": ("cat/anim.gif", _file_bytes(_frames(0, 128, 255), "GIF"), "multi-page GIF of 3 frames", None),
    "multi-page TIFF": ("cat/pages.tif", _file_bytes(_frames(0, 255), "TIFF"), "multi-page TIFF of 2 frames", None),
    "animated PNG": ("cat/anim.png", _file_bytes(_frames(0, 255), "PNG"), "multi-page PNG of 2 frames", None),
    "content is not what the name says": (
        "cat/disguised.png",
        _file_bytes(_frames(50), "PCX"),  # stands for EPS, which Pillow would hand to Ghostscript
        "its content is PCX, not one of PNG, JPEG",
        None,
    ),
    "broken image symlink": ("cat/gone.png", _symlink_to("nowhere.png"), "broken symlink: ", None),
    "broken class-folder symlink": ("bird", _symlink_to("unmounted/birds"), "bird/ (broken symlink: ", "bird/"),
    "symlink loop": ("cat/again", _symlink_to("cat"), "cat/again/ (symlink loop: links back to cat/)", "cat/again/"),
    "a class linking to another": (
        "kitty",
        _symlink_to("cat"),
        "kitty/ (links to a folder already read as cat/)",
        "kitty/",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_image_folder_bad_input_fails_by_default_and_is_left_out_and_listed_when_asked(tmp_path, monkeypatch, bad):
    folder = tmp_path / "images"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (10, 10), 30 * i).save(folder / cls / f"{i}.png")
    rel, content, why, listed = BAD_INPUTS[bad]
    (folder / rel).parent.mkdir(exist_ok=True)
    if content is None:  # a PNG header claiming more pixels than Pillow's limit (lowered to keep the file small)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
        content = _png_bytes(Image.new("L", (80, 80)))
    if callable(content):
        content(folder, folder / rel)
    else:
        (folder / rel).write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(
        DataError, match=rf"1 input\(s\) in .*cannot be used: .*{re.escape(why)}.*data.skip_unreadable: true"
    ):
        prepare(_cfg(name="image_folder", path=str(folder), image_size=8), out)
    assert not out.exists()

    data = _prepared(tmp_path, path=str(folder), name="image_folder", image_size=8, skip_unreadable=True)
    manifest = data.manifest
    left_out = {
        **manifest["skipped_files"],
        **manifest["skipped_folders"],
        **{f"{d}/": "" for d in manifest["empty_class_folders"]},
    }
    assert list(left_out) == [listed or rel]
    assert manifest["classes"] == ["cat", "dog"] and sum(manifest["split_sizes"].values()) == 8


def _load(tmp_path, **data):
    return image_folder.load(_cfg(name="image_folder", image_size=8, **data))


def test_image_folder_turns_photos_upright_by_their_exif_orientation(tmp_path):
    (tmp_path / "photos").mkdir()
    sideways = np.zeros((10, 20), np.uint8)
    sideways[:, :10] = 255  # as the sensor stored it: left half white
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 6  # Orientation: shown rotated 90° clockwise, so the white half is on top
    Image.fromarray(sideways).save(tmp_path / "photos" / "phone.jpg", exif=exif, quality=95)
    (image,) = _load(tmp_path, path=str(tmp_path / "photos")).train.images[:, 0].int()
    assert image[:3].min() > 200 and image[-3:].max() < 50


def test_image_folder_scales_float_and_32_bit_greyscale_by_their_range(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    for name, value in {"a": 0.0, "b": 0.8, "c": 1.0}.items():  # float TIFFs in [0, 1]
        Image.fromarray(np.full((10, 10), value, np.float32)).save(folder / f"{name}.tif")
    for name, value in {"d": 100 * 16843009, "e": 200 * 16843009, "f": 2**32 - 1}.items():  # > 2**31 too
        (folder / f"{name}.tif").write_bytes(_uint32_tiff(np.full((10, 10), value)))
    images = _load(tmp_path, path=str(folder)).train.images
    assert images.flatten(1).float().mean(1).tolist() == [0, 204, 255, 100, 200, 255]  # round(0.8 * 255) = 204


def test_image_folder_follows_a_symlinked_class_folder(tmp_path):
    elsewhere = tmp_path / "disk" / "dogs"
    elsewhere.mkdir(parents=True)
    Image.new("L", (10, 10), 200).save(elsewhere / "rex.png")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.new("L", (10, 10), 20).save(tmp_path / "images" / "cat" / "tom.png")
    (tmp_path / "images" / "dog").symlink_to(elsewhere)
    raw = _load(tmp_path, path=str(tmp_path / "images"))
    assert raw.classes == ["cat", "dog"] and list(raw.source_md5) == ["cat/tom.png", "dog/rex.png"]
    assert raw.train.labels.tolist() == [0, 1] and raw.extra["skipped_folders"] == {}


def test_image_folder_reads_a_camera_mpo_and_a_png_named_jpg_as_single_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    # A camera JPEG carrying a second picture (a preview, a depth map): not an animation, its first frame is it.
    frames = [Image.new("RGB", (10, 10), (v, v, v)) for v in (60, 250)]
    (folder / "camera.jpg").write_bytes(_file_bytes(frames, "MPO"))
    (folder / "renamed.jpg").write_bytes(_png_bytes(Image.new("L", (10, 10), 90)))
    raw = _load(tmp_path, path=str(folder))
    assert raw.train.images.flatten(1).float().mean(1).round().tolist() == [60, 90]


def test_image_folder_lists_a_file_or_folder_it_may_not_read(tmp_path, monkeypatch):
    folder = _image_folder(tmp_path / "images")
    denied = {folder / "cat" / "nested", folder / "dog" / "1.png"}
    real_scandir, real_read_bytes = os.scandir, Path.read_bytes

    def refuse(real):
        def call(path):
            if Path(path) in denied:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        return call

    monkeypatch.setattr(os, "scandir", refuse(real_scandir))
    monkeypatch.setattr(Path, "read_bytes", refuse(real_read_bytes))
    raw = _load(tmp_path, path=str(folder), skip_unreadable=True)
    assert raw.extra["skipped_folders"] == {"cat/nested/": "cannot be listed: Permission denied"}
    assert raw.extra["skipped_files"] == {
        "dog/1.png": "Permission denied",
        "dog/broken.png": "not an image Pillow can read",
    }


def test_image_folder_missing_or_without_images_raises(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        prepare(_cfg(name="image_folder", path=str(tmp_path / "nowhere")), tmp_path / "out")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"sub/broken.png \(not an image Pillow can read\), sub/ \(no usable image\)"):
        prepare(_cfg(name="image_folder", path=str(tmp_path / "empty")), tmp_path / "out")
    with pytest.raises(DataError, match="no usable images"):
        prepare(_cfg(name="image_folder", path=str(tmp_path / "empty"), skip_unreadable=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- CIFAR-10 (a small fake archive, with torchvision's md5 lists pointed at it) -----------------


def test_cifar10_from_a_mirror_is_converted_to_nchw(tmp_path, monkeypatch):
    cls = torchvision.datasets.CIFAR10
    rng = np.random.default_rng(0)
    members, batches = {}, {}
    for name in [n for n, _ in cls.train_list + cls.test_list]:
        hwc = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
        batches[name] = hwc
        members[name] = pickle.dumps({"data": hwc.transpose(0, 3, 1, 2).reshape(3, -1), "labels": [1, 2, 3]})
    members["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / cls.filename, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{cls.base_folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in members.items()}
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5((mirror / cls.filename).read_bytes()).hexdigest())
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})

    data = _prepared(tmp_path, name="cifar10", root=str(tmp_path / "raw"), mirror=str(mirror))
    assert data.image_shape == (3, 32, 32) and data.max_value == 255
    assert data.manifest["split_sizes"] == {"train": 13, "val": 2, "test": 3}
    assert data.manifest["source_md5"][cls.filename] == cls.tgz_md5
    assert torch.equal(data.test.images, torch.from_numpy(batches["test_batch"]).permute(0, 3, 1, 2))
    assert data.test.labels.tolist() == [1, 2, 3] and data.manifest["classes"][0] == "class0"


def _synthetic_prepared(out: Path, n_train: int, side: int = 112) -> int:
    """A prepared dataset of n_train random images (+ 500 val and test) of 17 grey levels; returns its size."""
    sizes = {"train": n_train, "val": 500, "test": 500}
    n = sum(sizes.values())
    source = Split(torch.randint(0, 17, (n, 1, side, side), dtype=torch.uint8), torch.randint(0, 10, (n,)))
    ends = torch.tensor(list(sizes.values())).cumsum(0).tolist()
    parts = {name: (source, torch.arange(end - size, end)) for (name, size), end in zip(sizes.items(), ends)}
    shape = [1, side, side]
    write_prepared(
        out, parts, {"format_version": FORMAT_VERSION, "image_shape": shape, "split_sizes": sizes, "max_value": 16}
    )
    return n * side * side


@pytest.mark.parametrize("what", ["vae", "classifier"])
def test_training_memory_does_not_grow_with_the_dataset(tmp_path, what):
    """The train and classifier stages map images.u8 and read their batches past PAGE_BUDGET: an epoch over 5x
    the data (+50 MB; for the classifier also its accuracy on every split) leaves the peak RSS within a few MB,
    where loading the data would add its size. glibc's heap is held to a fixed mmap threshold here: by default
    it grows over a run's first few hundred steps, whatever the data (to a plateau; fixing it costs speed, so
    genlab leaves it)."""
    peaks, sizes = [], []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "MALLOC_MMAP_THRESHOLD_": str(64 << 10)}
    for n_train in (1_000, 5_000):  # both over the classifier's evaluation batch, whose activations dominate
        sizes.append(_synthetic_prepared(tmp_path / str(n_train), n_train))
        worker = [str(Path(__file__).parent / "rss_worker.py"), str(tmp_path / str(n_train)), "1", str(2 << 20), what]
        done = subprocess.run([sys.executable, *worker], capture_output=True, text=True, check=True, env=env)
        peaks.append(int(done.stdout.split()[-1]) * 1024)
    grown, data_grown = peaks[1] - peaks[0], sizes[1] - sizes[0]
    assert data_grown > 50e6
    assert grown < 10e6, f"peak RSS grew {grown / 1e6:.0f} MB for {data_grown / 1e6:.0f} MB more data: {peaks}"


def test_rows_read_from_the_file_equal_rows_gathered_from_the_map(tmp_path, monkeypatch):
    prepare(_cfg(), tmp_path)
    monkeypatch.setattr(prepared, "PAGE_BUDGET", 1)  # every dataset counts as large: batches are read
    data = load_prepared(tmp_path)
    assert data.rows.fd is not None and Rows(tmp_path / IMAGES_FILE).fd is not None
    for split in (data.train, data.val, data.test):  # each split at its own offset in the file
        shuffled, run = torch.randperm(len(split))[:50], torch.arange(3, 40)
        for index in (shuffled, run, run[:0]):
            assert torch.equal(data.rows.gather(split.images, index), split.images[index])
