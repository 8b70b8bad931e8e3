"""Resize kernels (pipeline/resize.py) with the real libraries, and `train --resize`."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, synthetic_image, tiny_config
from edgeclf.errors import UsageError
from edgeclf.pipeline import resize
from edgeclf.pipeline.images import decode_rgb, load_image

# sha256 of load_image's pixels for pinned_images() at 16, 32 and 96 px, taken with the code before
# the kernel registry existed (Pillow 12's libjpeg): the default training path must not move.
PINNED = "d16ca065688a77fb2faa9fbfb869954b7f98f03fe5abb53984efe81ece826a37"


def pinned_images(folder):
    base = synthetic_image(1, 3, 64).resize((71, 47))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 when shown
    base.save(folder / "rotated.jpg", quality=90, exif=exif)
    rgba = np.asarray(base.convert("RGBA")).copy()
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    base.convert("P").save(folder / "palette.gif")
    synthetic_image(0, 1, 20).save(folder / "small.png")
    return sorted(folder.iterdir())


def test_default_kernel_reproduces_todays_pixels(tmp_path):
    digest = hashlib.sha256()
    for path in pinned_images(tmp_path):
        for size in (16, 32, 96):
            digest.update(load_image(path, size).tobytes())
            assert np.array_equal(load_image(path, size), load_image(path, size, "pil-bilinear"))
    assert digest.hexdigest() == PINNED


def test_every_kernel_runs_its_real_library_in_rgb_order():
    # Pure red on a non-square downscale: a BGRA mix-up (skia.Image.fromarray's default) would show blue.
    red = Image.new("RGB", (50, 30), (255, 0, 0))
    for name, kernel in resize.KERNELS.items():
        assert kernel.available(), f"{kernel.library} missing: make test installs the app extra"
        out = resize.fit(red, 16, name)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        assert (out == (255, 0, 0)).all(), name


def test_kernels_differ_as_measured_on_a_downscale():
    img = synthetic_image(0, 2, 96).resize((120, 90))
    ref = resize.fit(img, 24).astype(int)
    diff = {name: np.abs(resize.fit(img, 24, name).astype(int) - ref).mean() for name in resize.KERNELS}
    assert diff["pil-bilinear"] == 0
    # No antialiasing (Skia without mipmaps, OpenCV linear, TF) alias the stripes; they agree with each other.
    for name in ("android", "opencv-linear", "tf-bilinear", "nearest"):
        assert diff[name] > 1.5 * diff["opencv-area"], (name, diff)
    skia = resize.fit(img, 24, "android").astype(int)
    assert np.abs(skia - resize.fit(img, 24, "opencv-linear")).max() <= 2
    assert diff["android-mipmap"] < diff["android"]


def test_same_size_is_not_resampled_and_aspect_policies():
    img = synthetic_image(2, 0, 32)
    for name in resize.KERNELS:
        assert np.array_equal(resize.fit(img, 32, name), np.asarray(img))
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((0, 255, 0), (0, 0, 10, 20))  # a green band at the left edge
    assert (resize.fit(wide, 10)[:, 0] == (0, 255, 0)).all()  # squash keeps it
    assert (resize.fit(wide, 10, aspect="centre-crop") == (0, 0, 255)).all()  # cropped away
    boxed = resize.fit(wide, 10, aspect="letterbox")
    assert (boxed[0] == 0).all() and (boxed[5, 5] == (0, 0, 255)).all()


def test_orientation_can_be_ignored_only_on_request(tmp_path):
    path = pinned_images(tmp_path)[2]  # rotated.jpg: 71x47 stored, shown 47x71
    assert decode_rgb(path).size == (47, 71)
    assert decode_rgb(path, orient=False).size == (71, 47)


def test_unknown_kernel_is_a_usage_error(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    with pytest.raises(UsageError, match="--resize bicubic is not a known kernel"):
        tiny_config(data, tmp_path / "run", resize="bicubic")
    assert tiny_config(data, tmp_path / "run").resize == "pil-bilinear"


def test_train_with_the_apps_kernel_records_it_and_scores_with_it(tmp_path):
    from edgeclf.jobs.train import train
    from edgeclf.pipeline.runs import RUN_FILE, Run

    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=40)
    train(tiny_config(data, tmp_path / "run", fine_tune_epochs=1, resize="android"))
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["config"]["resize"] == "android"
    assert info["input"]["resize"]["library"] == "Skia" and info["input"]["resize"]["aspect"] == "squash"
    run = Run.open(tmp_path / "run")
    assert run.resize == "android"
    split = run.plan.decode("val", run.img_size, resize=run.resize)
    assert np.array_equal(split.images[0], load_image(split.paths[0], 32, "android"))
    assert not np.array_equal(split.images[0], load_image(split.paths[0], 32))
