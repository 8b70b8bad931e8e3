"""The data audit: each finding kind on tiny generated images, the leak policies of train, the CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from conftest import tiny_config
from edgeclf import records
from edgeclf.audit import audit_samples
from edgeclf.audit.findings import Limits
from edgeclf.errors import DatasetError
from edgeclf.pipeline.datasets import scan_folder, scan_for_scoring


def photo(seed: int, size=(64, 64)) -> Image.Image:
    """A smooth random picture (a coarse colour grid, bilinear upsampled): unlike any other seed's."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return coarse.resize(size, Image.BILINEAR)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def decoded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


@pytest.fixture
def dataset(tmp_path) -> dict:
    """A train/test pair of folders holding one planted case of each cheap finding."""
    train, test = tmp_path / "train", tmp_path / "test"
    files = {}
    for i in range(5):
        files[f"cat{i}"] = save(photo(i), train / "cat" / f"cat{i}.jpg", quality=90)
        files[f"dog{i}"] = save(photo(100 + i), train / "dog" / f"dog{i}.png")
        save(photo(200 + i), test / "cat" / f"t_cat{i}.png")
        save(photo(300 + i), test / "dog" / f"t_dog{i}.png")
    # exact: a PNG of a JPEG's decoded pixels
    files["cat0_png"] = save(decoded(files["cat0"]), train / "cat" / "cat0_resaved.png")
    # near: resized to 70% and mirrored, re-encoded
    files["dog1_near"] = save(ImageOps.mirror(photo(101).resize((45, 45), Image.BILINEAR)), train / "dog" / "dog1_small.jpg", quality=85)
    # leak: a training image's pixels in test
    files["leak"] = save(decoded(files["cat2"]), test / "cat" / "leaked.png")
    # label conflict: a cat's pixels filed under dog
    files["conflict"] = save(decoded(files["cat3"]), train / "dog" / "actually_cat3.png")
    files["tiny"] = save(photo(400, (20, 20)), train / "cat" / "tiny.png")
    files["wide"] = save(photo(401, (150, 50)), train / "dog" / "wide.png")
    files["gray"] = save(photo(402).convert("L"), train / "dog" / "gray.png")
    files["palette"] = save(photo(403).convert("P"), train / "cat" / "palette.png")
    files["broken"] = train / "cat" / "broken.jpg"
    files["broken"].write_bytes(b"\xff\xd8 not really a jpeg")
    return {"train": train, "test": test, "files": {k: str(v) for k, v in files.items()}}


def run_audit(dataset, img_size=64):
    train = scan_folder(dataset["train"], min_classes=1)
    test = scan_for_scoring(dataset["test"], train.classes, "test")
    return audit_samples({"train": train.samples, "test": test.samples}, train.classes, img_size)


def test_each_cheap_finding_is_found_exactly(dataset):
    result = run_audit(dataset)
    f = dataset["files"]
    got = sorted((x["kind"], tuple(sorted(x["files"]))) for x in result["findings"])
    expected = sorted([
        ("exact_duplicate", tuple(sorted([f["cat0"], f["cat0_png"]]))),
        ("exact_duplicate", tuple(sorted([f["cat2"], f["leak"]]))),
        ("exact_duplicate", tuple(sorted([f["cat3"], f["conflict"]]))),
        ("near_duplicate", tuple(sorted([f["dog1"], f["dog1_near"]]))),
        ("cross_split_leak", tuple(sorted([f["leak"], f["cat2"]]))),
        ("label_conflict", tuple(sorted([f["cat3"], f["conflict"]]))),
        ("tiny_image", (f["tiny"],)),
        ("extreme_aspect", (f["wide"],)),
        ("odd_mode", (f["gray"],)),
        ("odd_mode", (f["palette"],)),
    ])
    assert got == expected
    by_kind = {x["kind"]: x for x in result["findings"]}
    leak = by_kind["cross_split_leak"]
    assert leak["files"][0] == f["leak"] and leak["splits"] == ["test", "train"] and leak["score"] == 1.0
    conflict = by_kind["label_conflict"]
    assert sorted(conflict["classes"]) == ["cat", "dog"]
    assert {x["mode"] for x in result["findings"] if x["kind"] == "odd_mode"} == {"grayscale", "palette"}
    assert 0.8 < by_kind["near_duplicate"]["score"] < 1.0
    summary = result["summary"]
    assert summary["leaked"] == {"test": [f["leak"]]}
    assert [s["path"] for s in summary["skipped"]] == [f["broken"]]
    assert summary["counts"]["class_imbalance"] == 0 and summary["counts"]["likely_label_error"] == 0


def test_the_audit_changes_no_file(dataset):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(dataset["train"]).parent.rglob("*") if p.is_file()}
    run_audit(dataset)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(dataset["train"]).parent.rglob("*") if p.is_file()}
    assert before == after


def test_class_imbalance(tmp_path):
    for i in range(7):
        save(photo(i), tmp_path / "many" / f"{i}.png")
    for i in range(2):
        save(photo(50 + i), tmp_path / "few" / f"{i}.png")
    folder = scan_folder(tmp_path)
    result = audit_samples({"train": folder.samples}, folder.classes, 64)
    assert [(x["kind"], x["classes"], x["count"], x["largest"]) for x in result["findings"]] == [
        ("class_imbalance", ["few"], 2, 7)]


def test_blockwise_hash_search_matches_brute_force(monkeypatch):
    from edgeclf.audit import neighbours

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, (60, 4), dtype=np.uint64)
    # near copies: a few flipped bits
    copies = base[:20] ^ (np.uint64(1) << rng.integers(0, 64, (20, 4)).astype(np.uint64))
    hashes = np.concatenate([base, copies])
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 300)  # several blocks of a few rows
    ii, jj, d, p = neighbours.hash_pairs(hashes, 3, 3)
    count = lambda a, b: bin(int(a) ^ int(b)).count("1")
    brute = set()
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            plain = (count(hashes[i, 0], hashes[j, 0]), count(hashes[i, 2], hashes[j, 2]))
            mirror = (count(hashes[i, 0], hashes[j, 1]), count(hashes[i, 2], hashes[j, 3]))
            dd, pp = mirror if sum(mirror) < sum(plain) else plain
            if dd <= 3 and pp <= 3:
                brute.add((i, j, dd, pp))
    assert set(zip(ii.tolist(), jj.tolist(), d.tolist(), p.tolist())) == brute
    assert {(i, i + 60) for i in range(20)} <= {(i, j) for i, j, _, _ in brute}


def test_an_embedding_match_needs_hashes_that_do_not_contradict_it(dataset):
    from edgeclf.audit.findings import corroborated
    from edgeclf.audit.neighbours import hash_pairs, pair_hash_distance
    from edgeclf.audit.scan import scan

    train = scan_folder(dataset["train"], min_classes=1)
    scanned = scan({"train": train.samples}, train.classes)
    index = {str(p): i for i, p in enumerate(scanned.paths)}
    f = dataset["files"]
    ii, jj, d, p = hash_pairs(scanned.hashes, 64, 64)  # every pair, with hash_pairs' own distances
    assert pair_hash_distance(scanned.hashes, ii, jj).tolist() == (d + p).tolist()
    copy, unrelated = (index[f["dog1"]], index[f["dog1_near"]]), (index[f["cat1"]], index[f["dog4"]])
    assert pair_hash_distance(scanned.hashes, *(np.array(x) for x in zip(copy, unrelated))).tolist()[1] > 36
    # as if the embeddings called both pairs near: only the one the hashes do not contradict stays
    pairs = [(*copy, 0.97, "embedding"), (*unrelated, 0.95, "embedding")]
    assert corroborated(scanned, pairs, Limits()) == pairs[:1]


def test_blockwise_cosine_search_matches_brute_force(monkeypatch):
    from edgeclf.audit import neighbours

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[25:] = x[:25] + 0.05 * rng.normal(size=(25, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 200)
    ii, jj, _ = neighbours.cosine_pairs(x, 0.98)
    sims = x @ x.T
    brute = {(i, j) for i in range(50) for j in range(i + 1, 50) if sims[i, j] >= 0.98}
    assert set(zip(ii.tolist(), jj.tolist())) == brute and len(brute) >= 25


def test_cosine_search_keeps_at_most_a_few_neighbours_per_image(monkeypatch):
    from edgeclf.audit import neighbours

    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 500)
    same = np.tile(np.eye(1, 8, dtype=np.float32), (100, 1))  # 100 identical rows: 4,950 pairs above any floor
    ii, jj, sims = neighbours.cosine_pairs(same, 0.9, most=16)
    assert len(ii) == sum(min(16, 99 - i) for i in range(100)) and (jj > ii).all() and (sims >= 0.9).all()
    assert np.bincount(ii, minlength=100).max() == 16


def test_probe_flags_a_confidently_mislabelled_image():
    from edgeclf.audit.probe import likely_label_errors
    from edgeclf.audit.scan import Scanned

    rng = np.random.default_rng(2)
    centres = np.eye(3, 16) * 4
    labels = np.repeat(np.arange(3), 30).astype(np.int32)
    features = centres[labels] + rng.normal(0, 0.3, (90, 16))
    labels[7] = 2  # a class-0 image filed under class 2
    n = len(labels)
    scanned = Scanned(["a", "b", "c"], [Path(f"/x/{i}.png") for i in range(n)], np.zeros(n, np.int8), labels,
                      np.zeros((n, 16), np.uint8), np.zeros((n, 4), np.uint64), np.full((n, 2), 64, np.int32), ["RGB"] * n)
    found = likely_label_errors(scanned, features, confidence=0.9)
    assert [(f["files"], f["classes"], f["predicted"]) for f in found] == [(["/x/7.png"], ["c"], "a")]
    assert found[0]["score"] >= 0.9


def test_cli_writes_json_and_html_atomically(dataset, tmp_path):
    from edgeclf.cli.main import cli

    out = tmp_path / "audit-out"
    result = CliRunner().invoke(cli, ["audit", str(dataset["train"]), "--test-dir", str(dataset["test"]), "--img-size", "64",
                                      "--embeddings", "off", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {"findings", "summary"}
    saved = json.loads((out / "audit.json").read_text())
    assert saved["findings"] == printed["findings"]
    assert records.check(out / "audit.json") == "audit"  # tagged edgeclf.audit/1 and valid against its schema
    page = (out / "audit.html").read_text()
    assert "cross_split_leak" in page and page.count("data:image/png;base64") >= 10
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "audit.json"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    again = CliRunner().invoke(cli, ["audit", str(dataset["train"]), "--embeddings", "off", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr


def test_train_refuses_leaks_before_writing_anything(dataset, tmp_path, capsys):
    from edgeclf.jobs import train as training

    config = tiny_config(dataset["train"], tmp_path / "run", val_dir=str(dataset["test"]), leaks="refuse")
    with pytest.raises(DatasetError, match="1 scored image.* duplicate training images .1 in val"):
        training.train(config)
    assert f"leaked (val): {dataset['files']['leak']}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_train_excludes_leaks_and_records_them(dataset, tmp_path):
    from edgeclf.jobs import train as training

    config = tiny_config(dataset["train"], tmp_path / "run", val_dir=str(dataset["test"]), leaks="exclude",
                         img_size=32, fine_tune_epochs=1)
    training.train(config)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    audit = info["audit"]
    leaked = dataset["files"]["leak"]
    assert audit["summary"]["excluded"] == {"val": [leaked]}
    assert info["dataset"]["val"]["n_images"] == 10  # 11 files, the leak excluded
    assert audit["summary"]["counts"]["label_conflict"] == 1  # reported, never resolved
    assert (tmp_path / "run" / "audit.json").is_file()
    plan = json.loads((tmp_path / "run" / "split.json").read_text())
    assert "leaked.png" not in json.dumps(plan["splits"]["val"])


def test_train_warns_and_scores_both_ways(dataset, tmp_path):
    from edgeclf.jobs import train as training
    from edgeclf.report import write_report

    config = tiny_config(dataset["train"], tmp_path / "run", val_dir=str(dataset["test"]), img_size=32, fine_tune_epochs=1)
    result = training.train(config)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    figures = info["audit"]["figures_without_leaks"]["val"]
    assert (figures["n_images"], figures["n_without"], figures["leaked"]) == (11, 10, 1)
    assert figures["top1"] == info["metrics"]["val"]["top1"]
    assert result["audit"]["figures_without_leaks"] == info["audit"]["figures_without_leaks"]
    assert info["audit"]["summary"]["excluded"] == {} and info["audit"]["summary"]["leaks"] == "warn"
    assert info["audit"]["summary"]["checks"]["embeddings"].startswith("off: --weights none")
    page = Path(write_report(tmp_path / "run")["path"]).read_text()
    assert "Data audit" in page and "Scores with and without the leaked images" in page and "leaked.png" in page


    # validate scores an artefact again without the run's leaked images: as on a copy of the folder without them
    import shutil

    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run
    from edgeclf.jobs.validate import validate

    artefact = export_run(tmp_path / "run", ExportSpec(out=str(tmp_path / "fp32")))["path"]
    given = validate(artefact, data_dir=str(dataset["test"]), runs=2, warmup=0)["accuracy"]
    clean_dir = shutil.copytree(dataset["test"], tmp_path / "test-without-leak")
    (clean_dir / "cat" / "leaked.png").unlink()
    clean = validate(artefact, data_dir=str(clean_dir), runs=2, warmup=0)["accuracy"]
    assert given["n_images"] == 11 and clean["without_leaks"] is None
    assert given["without_leaks"] == {"leaked": 1, "n_images": 10, "top1": clean["top1"], "agreement": clean["agreement"],
                                      "changed": clean["changed"]}


def test_card_lines_say_what_leaks_did():
    from edgeclf.audit.card import card_lines

    audit = {"summary": {"counts": {"exact_duplicate": 2, "label_conflict": 1, "near_duplicate": 0},
                         "checks": {"embeddings": "off"}, "excluded": {}},
             "figures_without_leaks": {"test": {"n_images": 100, "top1": 0.9, "n_without": 97, "top1_without": 0.8969, "leaked": 3}}}
    lines = card_lines(audit)
    assert lines[0].startswith("- data audit: 2 exact duplicate, 1 label conflict (")
    assert "the test split holds 3 image(s) that also occur in training; figures without them: top-1 89.7% on 97 images " \
           "(as given: 90.0% on 100)" in lines[1]
    assert "label conflict" in lines[2] and "never relabels" in lines[2]
    assert card_lines(None) == ["- data audit: none recorded (a run made before edgeclf audited its data)"]


def test_auto_embeddings_weigh_the_measured_costs_of_embedding_and_of_each_kind_of_epoch():
    from types import SimpleNamespace

    from edgeclf.jobs.audit import embeddings_wanted

    def config(head, fine_tune, mode="auto", pretrained=True):
        return SimpleNamespace(audit_embeddings=mode, pretrained=pretrained, head_epochs=head, fine_tune_epochs=fine_tune)

    # pets3: 600 images, 389 of them trained on. 5 + 15 epochs: 1.1 x 600 / (389 x (5 + 1.5 x 15)) = 6%.
    assert embeddings_wanted(config(5, 15), 600, 389) == (True, "on: about 6% of training's cost")
    wanted, why = embeddings_wanted(config(5, 5), 600, 389)  # 1.1 x 600 / (389 x 12.5) = 14%
    assert not wanted and why.startswith("off: embedding 600 images would cost about 14% of 10 training epoch(s)")
    assert embeddings_wanted(config(5, 5, mode="on"), 600, 389)[0]
    assert not embeddings_wanted(config(5, 15, pretrained=False), 600, 389)[0]
