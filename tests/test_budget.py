"""Paired statistics against the float model, and the int8 accuracy budget of `edgeclf export`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeclf import exporters, ptq
from conftest import check_records
from test_cli import assert_one_line_error, run_cli

from edgeclf.errors import ExportError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs import budget as budget_job
from edgeclf.jobs.budget import BudgetSpec, export_within_budget
from edgeclf.pipeline.metrics import clopper_pearson, paired_difference, score
from edgeclf.pipeline.runs import Run


def one_hot(classes, k=3):
    return np.eye(k)[np.asarray(classes)]


def test_paired_difference_on_a_hand_made_example():
    # 20 images, all of class 0. The float model gets 0..15 right; the artefact flips 4 of those
    # (lost), fixes 1 of the float model's misses (gained), and moves 1 miss to another wrong class.
    labels = np.zeros(20, dtype=int)
    reference = np.array([0] * 16 + [1, 1, 2, 2])
    artefact = reference.copy()
    artefact[[0, 1, 2, 3]] = 1  # lost
    artefact[16] = 0  # gained
    artefact[17] = 2  # changed, wrong either way
    stats = paired_difference(one_hot(artefact), labels, one_hot(reference))
    assert (stats["changed"], stats["gained"], stats["lost"]) == (6, 1, 4)
    assert stats["drop"] == pytest.approx(16 / 20 - 13 / 20)
    # 5 discordant images, 4 of them lost: Clopper-Pearson for 4/5 is [0.28358, 0.99495]
    # (the beta quantiles B(0.025; 4, 2) and B(0.975; 5, 1)), mapped by drop = 5 (2p - 1) / 20.
    low, high = stats["drop_ci95"]
    assert low == pytest.approx(5 * (2 * 0.283582 - 1) / 20, abs=1e-5)
    assert high == pytest.approx(5 * (2 * 0.994962 - 1) / 20, abs=1e-5)
    assert low < 0 < high  # 4 lost against 1 gained is within noise
    # 9 lost, 0 gained is not: the exact McNemar p-value is 2 / 2**9 < 0.05.
    many = paired_difference(one_hot([1] * 9 + [0] * 11), labels, one_hot(np.zeros(20, dtype=int)))
    assert many["drop_ci95"][0] > 0 and many["drop_ci95"][1] == pytest.approx(9 / 20)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10)))


def test_score_carries_the_paired_keys_only_with_a_reference():
    labels = np.array([0, 1, 2])
    with_reference = score(one_hot([0, 1, 1]), labels, ["a", "b", "c"], one_hot([0, 1, 2]))
    assert (with_reference["changed"], with_reference["lost"], with_reference["drop"]) == (1, 1, pytest.approx(1 / 3))
    without = score(one_hot([0, 1, 1]), labels, ["a", "b", "c"])
    assert without["changed"] is None and without["drop_ci95"] is None


def test_budget_flags_are_checked_with_one_line_errors(tiny_run):
    cases = [
        (("--max-drop", "0.5"), r"accuracy budget needs --quant int8, not fp32"),
        (("--quant", "int8", "--max-drop", "-1"), r"--max-drop -1.0 is not a number of points"),
        (("--quant", "int8", "--min-agreement", "97"), r"--min-agreement 97.0 is not a fraction in \(0, 1\]"),
        (("--quant", "int8", "--max-drop", "0.5", "--ptq", "cle"), r"--ptq picks a recipe, and the budget picks its own"),
        (("--quant", "int8", "--allow-float-layers"), r"--allow-float-layers only applies to an accuracy budget"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run_cli("export", tiny_run, *args), pattern)
    with pytest.raises(UsageError, match="applies only to --target tflite or openvino"):
        BudgetSpec(ExportSpec(target="onnx", quant="int8"), max_drop=0.5, allow_float_layers=True)
    with pytest.raises(UsageError, match="--accuracy-control picks a recipe"):
        BudgetSpec(ExportSpec(target="openvino", quant="int8", accuracy_control=1.0), max_drop=0.5)


def test_openvino_float_layers_mean_nncf_accuracy_control_before_qat(tiny_run):
    spec = ExportSpec(target="openvino", quant="int8", calib_size=45)
    steps = budget_job.recipes(Run.open(tiny_run), BudgetSpec(spec, max_drop=0.5))
    names = [r.name for r in steps]
    assert not any("accuracy control" in n for n in names)
    assert names[:2] == ["nncf, ptq none", "nncf, ptq round,bias"]  # plain first, then the default
    assert [step.prepare()[1].ptq for step in steps[:2]] == ["none", None]
    allowed = budget_job.recipes(Run.open(tiny_run), BudgetSpec(spec, max_drop=0.5, allow_float_layers=True))
    assert [r.name for r in allowed][-2:] == ["nncf accuracy control, ops in float until drop <= 0.5",
                                             "QAT (edgeclf optimize --qat), exported as-is"]
    assert allowed[-2].prepare()[1].accuracy_control == 0.5
    agreement_only = budget_job.recipes(Run.open(tiny_run), BudgetSpec(spec, min_agreement=0.97, allow_float_layers=True))
    assert agreement_only[-2].prepare()[1].accuracy_control == pytest.approx(3.0)


def test_onnx_budget_starts_from_plain_ptq_and_then_keeps_the_default(tiny_run):
    spec = ExportSpec(target="onnx", quant="int8", calib_size=45)
    steps = budget_job.recipes(Run.open(tiny_run), BudgetSpec(spec, max_drop=0.5))
    assert [r.name for r in steps] == ["ort minmax, ptq none", "ort minmax, ptq input,round,bias", "ort percentile", "ort entropy",
                                       "QAT (edgeclf optimize --qat), exported as-is"]
    specs = [step.prepare()[1] for step in steps[:4]]
    assert [s.ptq for s in specs] == ["none", None, None, None]  # None: the format's default, input,round,bias
    assert [s.calib_method for s in specs] == ["minmax", "minmax", "percentile", "entropy"]


def hidden_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


def test_budget_stops_at_the_first_recipe_that_fits(tiny_run, tmp_path):
    out = tmp_path / "exports" / "tflite-int8"
    manifest = export_within_budget(tiny_run, BudgetSpec(ExportSpec(quant="int8", calib_size=30, out=str(out)), max_drop=100))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["budget"] == manifest["budget"]
    assert on_disk["budget"]["max_drop"] == 1.0 and on_disk["budget"]["min_agreement"] is None
    [attempt] = on_disk["budget"]["attempts"]
    assert attempt["recipe"] == on_disk["budget"]["chosen"] == "ptq none"
    assert set(attempt) == {"recipe", "top1", "drop", "agreement", "changed", "seconds"}
    assert attempt["drop"] == pytest.approx(on_disk["accuracy"]["drop"])
    assert on_disk["export"]["out"] == str(out) and on_disk["export"]["ptq"] == "none"
    assert hidden_leftovers(out.parent) == []
    assert check_records(out) == {"manifest"}


def test_budget_escalates_when_a_recipe_misses(tiny_run, tmp_path, monkeypatch):
    real_export = budget_job.export_run

    def export_run(run_dir, spec, **kwargs):  # plain PTQ pretends to lose 10 points; the scorer is otherwise real
        manifest = real_export(run_dir, spec, **kwargs)
        if spec.ptq == "none":
            manifest["accuracy"] |= {"drop": 0.1, "agreement": 0.8}
        return manifest

    monkeypatch.setattr(budget_job, "export_run", export_run)
    out = tmp_path / "tflite-int8"
    spec = ExportSpec(quant="int8", calib_size=45, out=str(out))
    manifest = export_within_budget(tiny_run, BudgetSpec(spec, max_drop=5, min_agreement=0.5))
    attempts = manifest["budget"]["attempts"]
    improved = ptq.label(exporters.get("tflite").ptq_default)
    assert [a["recipe"] for a in attempts] == ["ptq none", f"ptq {improved}"]
    assert attempts[0]["drop"] == 0.1 and manifest["budget"]["chosen"] == attempts[1]["recipe"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["export"]["ptq"] == improved and on_disk["details"]["ptq"]["recipe"] == improved
    assert hidden_leftovers(tmp_path) == []


def test_a_retrained_recipe_is_judged_against_the_model_it_was_asked_to_export(tiny_run, tmp_path, monkeypatch):
    """QAT ships a retrained copy; its drop and agreement are against the run's float model, not the copy's."""
    import shutil

    from edgeclf.devices.host import predict_file
    from edgeclf.pipeline.predict import predict_probs
    from edgeclf.pipeline.runs import MODEL_FILE

    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_run, retrained, ignore=shutil.ignore_patterns("exports"))
    model = Run.open(retrained).load_model()
    head = [layer for layer in model.layers if layer.get_weights()][-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + np.array([8.0, 0.0, 0.0], dtype=bias.dtype)])  # the copy now favours class 0
    model.save(retrained / MODEL_FILE)
    monkeypatch.setattr(budget_job, "recipes", lambda run, budget: [
        budget_job.Recipe("retrained stand-in", lambda: (retrained, budget.export))])
    out = tmp_path / "tflite-int8"
    manifest = export_within_budget(tiny_run, BudgetSpec(ExportSpec(quant="int8", calib_size=30, out=str(out)), max_drop=100))
    [attempt] = manifest["budget"]["attempts"]
    run = Run.open(tiny_run)
    val = run.plan.decode("val", run.img_size)
    float_labels = predict_probs(run.load_model(), val.images).argmax(1)
    artefact_labels = predict_file(out / manifest["model_file"], val.images).argmax(1)
    assert attempt["agreement"] == pytest.approx((artefact_labels == float_labels).mean())
    assert attempt["changed"] == int((artefact_labels != float_labels).sum()) > 0
    assert manifest["accuracy"]["agreement"] > attempt["agreement"]  # against its own float model it looked better


def test_budget_that_nothing_meets_publishes_nothing(tiny_run, tmp_path, monkeypatch):
    seen = []

    def export_run(run_dir, spec, **kwargs):
        # Every recipe misses and the QAT run stands in for training. The exports are stand-ins too
        # (a folder with a file, as a real export leaves): this test is about the order of the
        # recipes and giving up cleanly; the two tests above convert for real.
        seen.append((str(run_dir), spec.ptq))
        Path(spec.out).mkdir(parents=True)
        (Path(spec.out) / "model.tflite").write_bytes(b"stand-in")
        drop = 0.02 if spec.ptq == "none" else 0.04
        return {"accuracy": {"top1": 0.9 - drop, "drop": drop, "agreement": 0.9, "changed": 6}}

    monkeypatch.setattr(budget_job, "export_run", export_run)
    monkeypatch.setattr(budget_job, "_qat_run", lambda run: (_ for _ in ()).throw(ExportError("QAT stand-in failed", "none")))
    out = tmp_path / "exports" / "tflite-int8"
    spec = ExportSpec(quant="int8", calib_size=45, out=str(out))
    with pytest.raises(ExportError, match=r"closest was 'ptq none' with drop 2.00 points and agreement 90.0%; nothing published") as exc:
        export_within_budget(tiny_run, BudgetSpec(spec, max_drop=1))
    assert "edgeclf optimize --qat" in exc.value.fix
    assert [recipe for _, recipe in seen] == ["none", *dict.fromkeys([ptq.label(exporters.get("tflite").ptq_default), "input,bias", "input,round,bias", "input,bias,ranges"])]
    # plain and the improved PTQ recipes; then the QAT attempt failed before exporting
    assert not out.exists() and hidden_leftovers(out.parent) == []
    report = json.loads((out.parent / "tflite-int8.budget-report.json").read_text())["budget"]
    assert report["chosen"] is None and report["published"] is False and report["max_drop"] == 0.01
    assert [a["recipe"] for a in report["attempts"]][-1].startswith("QAT") and "error" in report["attempts"][-1]
    assert [a["drop"] for a in report["attempts"][:2]] == [0.02, 0.04]
