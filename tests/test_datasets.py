"""Image decoding edge cases and dataset checks, each generated in the test."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, synthetic_image
from edgeclf.errors import DatasetError
from edgeclf.pipeline.datasets import decode, scan_folder, stratified_sample, stratified_split
from edgeclf.pipeline.images import UnreadableImage, load_image


def test_palette_cmyk_rgba_gray16_gif_webp_bmp_become_rgb(tmp_path):
    rgb = synthetic_image(0, 0, 20)
    rgb.convert("P").save(tmp_path / "palette.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    gray16 = Image.fromarray((np.arange(400).reshape(20, 20) * 160).astype(np.uint16))
    gray16.save(tmp_path / "gray16.png")
    frames = [rgb, Image.new("RGB", (20, 20), (0, 0, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    rgb.save(tmp_path / "img.webp")
    rgb.save(tmp_path / "img.bmp")
    for name in ("palette.png", "cmyk.jpg", "rgba.png", "gray16.png", "anim.gif", "img.webp", "img.bmp"):
        pixels = load_image(tmp_path / name, 16)
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8, name
    gray = load_image(tmp_path / "gray16.png", 20)
    # 16-bit values are scaled down, not clipped: the brightest corner is near white, the darkest near black.
    assert gray[0, 0, 0] == 0 and gray[-1, -1, 0] > 240 and 100 < gray[10, 10, 0] < 160
    gif = load_image(tmp_path / "anim.gif", 20)
    assert gif.mean() > 50  # the first frame, not the black second one


def test_exif_orientation_is_honoured(tmp_path):
    # A 30x10 image stored sideways with orientation 6 (rotate 90 CW to display): shown as 10 wide, 30 tall.
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white block at the stored left end
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)
    upright = load_image(tmp_path / "rotated.jpg", 30)
    # After rotating 90 degrees clockwise the stored left end becomes the top.
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50


def test_corrupt_and_truncated_files_raise_unreadable(tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    buffer = io.BytesIO()
    synthetic_image(1, 1, 64).save(buffer, "PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for name in ("corrupt.jpg", "truncated.png"):
        with pytest.raises(UnreadableImage):
            load_image(tmp_path / name, 16)


def test_bad_files_are_skipped_and_non_images_ignored(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 4, "b": 4})
    (root / "a" / "broken.jpg").write_bytes(b"garbage")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / ".DS_Store").write_bytes(b"\0\0")
    folder = scan_folder(root)
    assert len(folder.samples) == 9  # the .txt and hidden file never count
    split = decode("train", root, folder.classes, folder.samples, 16)
    assert len(split) == 8
    assert split.skipped == [{"path": "a/broken.jpg", "reason": split.skipped[0]["reason"]}]
    json.dumps(split.summary())


def test_empty_class_single_class_and_missing_folder_are_errors(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="class 'empty'.*has no images"):
        scan_folder(root)
    single = make_image_folder(tmp_path / "single", {"only": 3})
    with pytest.raises(DatasetError, match="only class 'only'.*at least 2 classes"):
        scan_folder(single)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_class_with_only_unreadable_files_fails_before_training(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 3})
    (root / "b").mkdir()
    (root / "b" / "x.jpg").write_bytes(b"junk")
    folder = scan_folder(root)
    with pytest.raises(DatasetError, match="class 'b' has no readable images"):
        decode("train", root, folder.classes, folder.samples, 16)


def test_mismatched_classes_between_splits(tmp_path):
    from conftest import tiny_config
    from edgeclf.pipeline.splits import plan_splits

    train = make_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    test = make_image_folder(tmp_path / "test", {"a": 2, "c": 2})
    with pytest.raises(DatasetError, match="missing b; unexpected c"):
        plan_splits(tiny_config(train, tmp_path / "run", test_dir=str(test)))


def test_split_is_stratified_and_deterministic(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 20, "b": 10, "c": 5}, size=8)
    folder = scan_folder(root)
    train1, val1 = stratified_split(folder, 0.2, seed=7)
    train2, val2 = stratified_split(scan_folder(root), 0.2, seed=7)
    assert [s.path for s in val1] == [s.path for s in val2]
    assert [s.path for s in train1] == [s.path for s in train2]
    counts = np.bincount([s.label for s in val1])
    assert counts.tolist() == [4, 2, 1]
    assert not {s.path for s in train1} & {s.path for s in val1}
    _, val3 = stratified_split(folder, 0.2, seed=8)
    assert [s.path for s in val3] != [s.path for s in val1]


def test_stratified_sample_is_proportional_and_deterministic(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 30, "b": 20, "c": 10}, size=8)
    samples = scan_folder(root).samples
    picked = stratified_sample(samples, 3, 12, seed=3)
    assert np.bincount([s.label for s in picked]).tolist() == [6, 4, 2]
    assert [s.path for s in picked] == [s.path for s in stratified_sample(samples, 3, 12, seed=3)]
    assert len(stratified_sample(samples, 3, 500, seed=3)) == 60


def test_packed_file_list_gives_back_every_path_and_label_in_a_fraction_of_the_memory():
    import tracemalloc

    from edgeclf.pipeline.datasets import PathList, Sample, Samples

    odd = Path("/data/caf\udce9/x y.jpg")  # an undecodable byte, as os.listdir hands it over
    paths = [Path(f"/data/images/class{i % 10:02d}/{i:06d}.jpg") for i in range(20000)] + [odd]
    labels = [i % 10 for i in range(len(paths))]
    packed = Samples(paths, labels)
    assert len(packed) == len(paths) and packed[-1] == Sample(odd, labels[-1]) and packed[123].path == paths[123]
    assert list(packed) == [Sample(p, label) for p, label in zip(paths, labels)]
    assert packed[5:8] == [Sample(p, label) for p, label in zip(paths[5:8], labels[5:8])]
    assert list(packed[np.array([3, 1])].paths) == [paths[3], paths[1]]
    with pytest.raises(IndexError):
        packed[len(paths)]
    assert len(PathList()) == 0 and list(Samples()) == []

    def held(build) -> int:
        tracemalloc.start()
        kept = build()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return size / len(paths)

    as_strings = [str(p) for p in paths]
    per_image_packed = held(lambda: Samples(as_strings, labels))
    per_image_objects = held(lambda: [Sample(Path(p), label) for p, label in zip(as_strings, labels)])
    assert per_image_packed < 80 and per_image_objects > 4 * per_image_packed, (per_image_packed, per_image_objects)
