"""The one writer of run directories, for `edgeclf train` and `edgeclf optimize` alike:
model, labels, split, run.json, curves and confusion matrix, into a staging directory."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from edgeclf import console, records, tfenv
from edgeclf.pipeline import plots
from edgeclf.pipeline.backbones import INPUT_NAME, get_backbone
from edgeclf.pipeline.predict import split_metrics
from edgeclf.pipeline.resize import contract as resize_contract
from edgeclf.pipeline.runs import (
    AUDIT_FILE,
    LABELS_FILE,
    MODEL_FILE,
    RUN_FILE,
    SPLIT_FILE,
    write_labels,
)
from edgeclf.pipeline.splits import SplitPlan, save_plan

RUN_FORMAT = records.tag("run")


def write_run(work: Path, model, config, plan: SplitPlan, splits: dict, history: list, timing: dict,
              optimization: dict | None = None, save=None, title: str = "", audit: dict | None = None) -> dict:
    """Score `model` on val/test, write the run into `work` and return run.json's record.

    `save(model, path)` writes the model file (default: `model.save`); `title` describes the
    model in the confusion matrix's title (e.g. "50% pruned"); `audit` is the data audit of
    the run's splits (jobs/audit.py), scored again without its leaked images.
    """
    classes = plan.classes
    metrics = {name: split_metrics(model, splits[name]) for name in ("val", "test") if name in splits}
    if audit is not None:
        from edgeclf.pipeline.leaks import figures_without_leaks

        audit = audit | {"figures_without_leaks": figures_without_leaks(model, splits, metrics, audit["summary"]["leaked"])}
        (work / AUDIT_FILE).write_text(console.to_json(records.stamped("audit", audit)) + "\n")
    (save or (lambda m, path: m.save(path)))(model, work / MODEL_FILE)
    write_labels(work / LABELS_FILE, classes)
    save_plan(plan, work / SPLIT_FILE)
    info = run_record(config, classes, plan, splits, history, timing, metrics, optimization)
    info["params"] = int(model.count_params())  # so tables need not load the model to count them
    if audit is not None:
        info["audit"] = audit
    (work / RUN_FILE).write_text(console.to_json(info))
    plots.training_curves(history, work / "training.png")
    split_name = "test" if "test" in metrics else "val"
    plots.confusion_matrix(metrics[split_name]["confusion"], classes, work / "confusion_matrix.png",
                           f"{' '.join(p for p in (config.arch, title) if p)} on {split_name} "
                           f"(top-1 {metrics[split_name]['top1']:.3f})")
    return info


def run_record(config, classes, plan, splits, history, timing, metrics, optimization=None) -> dict:
    backbone = get_backbone(config.arch)
    size = config.img_size
    return {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "versions": tfenv.versions(),
        "labels": classes,
        "input": {
            "name": INPUT_NAME,
            "shape": [1, size, size, 3],
            "dtype": "float32",
            "range": [0, 255],
            "preprocessing": f"raw RGB 0-255, resized to {size}x{size} ({config.resize}, aspect ratio not kept); "
                             f"{backbone.in_graph_preprocessing} happens inside the model",
            "resize": resize_contract(config.resize),
        },
        "dataset": {"split": plan.how, **{name: split.summary() for name, split in splits.items()}},
        "history": history,
        "timing": timing,
        "metrics": metrics,
        "optimization": optimization,
    }


def summary(info: dict) -> dict:
    """What `--json` prints: the same keys as run.json, minus the bulky parts."""
    return {
        "arch": info["config"]["arch"],
        "img_size": info["input"]["shape"][1],
        "labels": info["labels"],
        "dataset": {k: ({kk: vv for kk, vv in v.items() if kk != "skipped"} | {"skipped": len(v["skipped"])})
                    if isinstance(v, dict) else v for k, v in info["dataset"].items()},
        "timing": info["timing"],
        "metrics": info["metrics"],
    } | ({"audit": {"counts": info["audit"]["summary"]["counts"], "excluded": info["audit"]["summary"].get("excluded"),
                    "figures_without_leaks": info["audit"].get("figures_without_leaks")}} if info.get("audit") else {})
