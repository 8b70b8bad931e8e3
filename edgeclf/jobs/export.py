"""`edgeclf export`: a run directory in, a verified artefact directory out.

The artefact directory is built in a temp sibling and renamed into place only after the
conversion succeeded and the artefact itself was scored on the run's validation split.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import calibration, console, exporters, tfenv
from edgeclf.artefacts import MANIFEST_FORMAT, file_entries, write_manifest
from edgeclf.atomic import staged_dir
from edgeclf.errors import ModelError
from edgeclf.exporters.base import ExportJob
from edgeclf.exporters.spec import ExportSpec
from edgeclf.pipeline.metrics import score
from edgeclf.pipeline.predict import predict_file, predict_probs
from edgeclf.pipeline.runs import LABELS_FILE, Run, write_labels

EXPORTS_DIR = "exports"


def default_out(run: Run, spec: ExportSpec) -> Path:
    return run.path / EXPORTS_DIR / spec.default_dir_name()


def export_run(run_dir, spec: ExportSpec) -> dict:
    run = Run.open(run_dir)
    fmt = exporters.load(spec.target)
    out = Path(spec.out).expanduser().resolve() if spec.out else default_out(run, spec)
    if out == run.path or out in run.path.parents:
        raise ModelError(f"--out {out} would replace the run directory itself", "use a folder under exports/ or outside the run")
    model = run.load_model()
    calib = _calibration(run, spec)
    val = _validation_split(run)
    float_probs = predict_probs(model, val.images) if val is not None else None

    with staged_dir(out, overwrite=True) as staging:
        job = ExportJob(run, model, spec, calib, staging, prune_policy=run.prune_policy)
        started = time.perf_counter()
        with console.progress() as bar:
            bar.add_task(f"converting to {spec.target} {spec.quant}", total=None, status="")
            result = fmt.export(job)
        conversion_s = time.perf_counter() - started
        write_labels(staging / LABELS_FILE, run.labels)
        accuracy = None
        if val is not None:
            probs = predict_file(staging / result.model_file, val.images, label=f"scoring {spec.target} {spec.quant} on val")
            metrics = score(probs, val.labels, run.labels, float_probs)
            accuracy = {
                "split": "val",
                "n_images": metrics["n_images"],
                "float_top1": score(float_probs, val.labels, run.labels)["top1"],
                "top1": metrics["top1"],
                "top5": metrics.get("top5"),
                "agreement": metrics["agreement"],
                "confusion": metrics["confusion"],
            }
        manifest = {
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
            "source_run": {
                "path": str(run.path),
                "arch": run.arch,
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
        manifest["files"] = file_entries(staging)
        write_manifest(staging, manifest)
    manifest["path"] = str(out)
    return manifest


def _calibration(run: Run, spec: ExportSpec):
    """The calibration set, which a QAT run exported to TFLite does without if its images are gone."""
    if not spec.needs_calibration:
        return None
    if run.qat and spec.target == "tflite" and spec.calib_dir is None and not spec.debug_quant \
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
    return run.plan.decode("val", run.img_size, cache="auto")
