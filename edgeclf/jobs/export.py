"""`edgeclf export`: a run directory in, a verified artefact directory out.

The artefact directory is built in a temp sibling and renamed into place only after the
conversion succeeded and the artefact itself was scored on the run's validation split.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import calibration, console, exporters, tfenv
from edgeclf.artefacts import MANIFEST_FILE, MANIFEST_FORMAT, file_entries, write_manifest
from edgeclf.atomic import check_output, staged_dir, temp_files_in
from edgeclf.devices.host import predict_file
from edgeclf.exporters.base import ExportJob
from edgeclf.exporters.spec import ExportSpec
from edgeclf.errors import ModelError, UsageError
from edgeclf.layout import sha256_file
from edgeclf.pipeline.backbones import BACKBONES, get_backbone
from edgeclf.pipeline.metrics import PAIRED_KEYS, score
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.resize import contract as resize_contract
from edgeclf.pipeline.runs import LABELS_FILE, MODEL_FILE, RUN_FILE, Run, write_labels
from edgeclf.outputs import absolute

EXPORTS_DIR = "exports"


def default_out(run: Run, spec: ExportSpec) -> Path:
    return run.path / EXPORTS_DIR / spec.default_dir_name()


def export_run(run_dir, spec: ExportSpec, overwrite: bool = False) -> dict:
    """Export a run; an explicit --out replaces an earlier artefact only with `overwrite`, the
    default location RUN/exports/<target>-<quant> always replaces its own artefact."""
    run = Run.open(run_dir)
    fmt = exporters.load(spec.target)
    out = absolute(spec.out) if spec.out else default_out(run, spec)
    overwrite = overwrite or not spec.out
    images = [spec.calib_dir, *(run.plan.roots.values() if run.plan is not None else ())]
    check_output(out, MANIFEST_FILE, overwrite, inputs=images, input_runs=[run.path])
    checked_arch(run)
    model = run.load_model()
    calib = _calibration(run, spec)
    val = _validation_split(run)
    float_probs = predict_probs(model, val.images) if val is not None else None

    with staged_dir(out, MANIFEST_FILE, overwrite, inputs=images, input_runs=[run.path]) as staging:
        job = ExportJob(run, model, spec, calib, staging, prune_policy=run.prune_policy, validation=val)
        started = time.perf_counter()
        with console.progress() as bar, temp_files_in(staging / ".tmp"):
            bar.add_task(f"converting to {spec.target} {spec.quant}", total=None, status="")
            result = fmt.export(job)
        conversion_s = time.perf_counter() - started
        write_labels(staging / LABELS_FILE, run.labels)
        accuracy = None
        if val is not None:
            probs = predict_file(staging / result.model_file, val.images, label=f"scoring {spec.target} {spec.quant} on val")
            accuracy = _accuracy("val", probs, float_probs, val.labels, run.labels)
        manifest = _manifest(run, spec, out, result, calib, conversion_s, accuracy)
        if spec.last_mile:
            from edgeclf.lastmile import sensitivity

            manifest["last_mile"] = sensitivity.measure(run, staging / result.model_file, result.input["dtype"])
        manifest["files"] = file_entries(staging)
        write_manifest(staging, manifest)
    manifest["path"] = str(out)
    return manifest


def checked_arch(run: Run) -> str:
    """run.json's arch, from the closed set of backbones: the manifest hands it on to generated code."""
    try:
        return get_backbone(str(run.arch)).name
    except UsageError:
        raise ModelError(f"{run.path / RUN_FILE} names arch {run.arch!r}, not one of {', '.join(BACKBONES)}",
                         "fix config.arch in run.json or train the run again") from None


def accuracy_against(run: Run, model_path: Path) -> dict | None:
    """The accuracy block of any artefact against `run`'s float model on its val split (None
    without one): how the budget judges an artefact exported from a retrained (QAT) copy of it."""
    val = _validation_split(run)
    if val is None:
        return None
    float_probs = predict_probs(run.load_model(), val.images)
    probs = predict_file(model_path, val.images, label=f"scoring {model_path.name} against {run.path.name}'s float model")
    return _accuracy("val", probs, float_probs, val.labels, run.labels)


def _accuracy(split: str, probs, float_probs, labels, classes: list[str]) -> dict:
    """The manifest's accuracy block: the artefact against the labels and the float model."""
    metrics = score(probs, labels, classes, float_probs)
    return {
        "split": split,
        "n_images": metrics["n_images"],
        "float_top1": score(float_probs, labels, classes)["top1"],
        "top1": metrics["top1"],
        "top5": metrics.get("top5"),
        "agreement": metrics["agreement"],
        **{key: metrics[key] for key in PAIRED_KEYS},
        "confusion": metrics["confusion"],
    }


def _manifest(run: Run, spec: ExportSpec, out: Path, result, calib, conversion_s: float, accuracy: dict | None) -> dict:
    """manifest.json without `files` (added once every other file is written)."""
    return {
        "format": MANIFEST_FORMAT,
        "target": spec.target,
        "quant": spec.quant,
        "io": spec.io,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_file": result.model_file,
        "input": result.input,
        "output": result.output,
        "labels": run.labels,
        "preprocessing": run.info["input"]["preprocessing"],
        "resize": resize_contract(run.resize),
        "source_run": {
            "path": str(run.path.resolve()),
            "model_sha256": sha256_file(run.path / MODEL_FILE),
            "arch": checked_arch(run),
            "metrics": {split: {k: m.get(k) for k in ("top1", "top5", "n_images")} for split, m in run.metrics.items()},
            "optimization": run.info.get("optimization"),
        },
        "export": spec.to_dict() | {"out": str(out)},
        "calibration": calib.summary() if calib is not None else None,
        "details": result.details,
        "versions": tfenv.versions() | result.versions,
        "conversion_s": round(conversion_s, 2),
        "accuracy": accuracy,
    }


def _calibration(run: Run, spec: ExportSpec):
    """The calibration set, which a QAT run does without if its images are gone and its format keeps QAT's ranges."""
    if not spec.needs_calibration:
        return None
    if run.qat and exporters.get(spec.target).keeps_qat_ranges and spec.calib_dir is None and not spec.debug_quant \
            and not calibration.training_images_available(run):
        console.info("the run's training images are gone: int8 uses the ranges QAT learned "
                     "(a pixel-range probe covers the in-graph preprocessing)")
        return calibration.pixel_range_probe(run)
    return calibration.build(run, spec.calib_size, spec.calib_dir)


def _validation_split(run: Run):
    if run.plan is None or "val" not in run.plan.samples:
        console.warn("the run records no validation split; the manifest will carry no accuracy")
        return None
    missing = [s.path for s in run.plan.samples["val"] if not s.path.exists()]
    if missing:
        console.warn(f"{len(missing)} validation image(s) of the run are gone (e.g. {missing[0]}); the manifest will carry no accuracy")
        return None
    return run.plan.decode("val", run.img_size, cache="auto", resize=run.resize)
