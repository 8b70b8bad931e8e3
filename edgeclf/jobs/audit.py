"""`edgeclf audit`, and the same audit at the start of `edgeclf train` with its leak policy.

The audit only reads the user's files. Its output (`--out`) is staged and renamed into place;
embedding features go to a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from edgeclf import console, outputs, records
from edgeclf.atomic import staged_dir
from edgeclf.audit import audit_samples
from edgeclf.audit.embeddings import Embedder
from edgeclf.errors import DatasetError, UsageError
from edgeclf.pipeline.datasets import scan_folder, scan_for_scoring
from edgeclf.pipeline.runs import AUDIT_FILE

HTML_FILE = "audit.html"
# `auto` in training: embed only when it costs at most this share of training. Costs per image, in
# units of one image of a head epoch, measured by `benchmarks/audit.py --parts cost` (MobileNetV2,
# 160 px, pets3, 2 cores): embedding one image (decoding it included) 1.10, one image of a
# fine-tune epoch 1.50 (52.8, 48.2 and 72.1 ms).
EMBEDDING_SHARE = 0.1
EMBED_COST = 1.1
FINE_TUNE_COST = 1.5
RUN_FINDINGS_KEPT = 1000  # per kind in run.json; the run's audit.json holds them all


def audit_folders(data_dir, val_dir=None, test_dir=None, out=None, overwrite: bool = False, img_size: int = 224,
                  embeddings: str = "on", arch: str = "mobilenetv2", weights: str = "imagenet", alpha: float = 1.0,
                  seed: int = 0) -> dict:
    """Audit DATA_DIR (as the training split) and the optional val/test folders; write `out` if given."""
    if embeddings not in ("on", "off"):
        raise UsageError(f"--embeddings {embeddings} is not supported", "use on or off")
    train = scan_folder(Path(data_dir), "training data", min_classes=1)
    samples = {"train": train.samples}
    for name, folder in (("val", val_dir), ("test", test_dir)):
        if folder:
            samples[name] = scan_for_scoring(Path(folder), train.classes, name).samples
    embedder = _embedder(embeddings == "on", arch, weights, img_size, alpha)
    inputs = [p for p in (data_dir, val_dir, test_dir) if p]
    if out is None:
        with tempfile.TemporaryDirectory(prefix="edgeclf-audit-") as work:
            return audit_samples(samples, train.classes, img_size, embedder, Path(work), seed=seed)
    out = outputs.absolute(out)
    with staged_dir(out, AUDIT_FILE, overwrite, inputs=inputs) as staging:
        with tempfile.TemporaryDirectory(prefix="edgeclf-audit-") as work:
            result = audit_samples(samples, train.classes, img_size, embedder, Path(work), seed=seed)
        write_audit(staging, result, standalone=True)
    result["summary"]["out"] = str(out)
    return result


def write_audit(folder: Path, result: dict, standalone: bool = False) -> None:
    """audit.json (and, for `edgeclf audit --out`, the stand-alone audit.html) into `folder`."""
    (folder / AUDIT_FILE).write_text(console.to_json(records.stamped("audit", result)) + "\n")
    if standalone:
        from edgeclf.report.audit_section import page

        (folder / HTML_FILE).write_text(page(result).encode("ascii", "xmlcharrefreplace").decode("ascii"))


def _embedder(wanted: bool, arch: str, weights: str, img_size: int, alpha: float) -> Embedder | None:
    return Embedder(arch, weights, img_size, alpha) if wanted else None


# -- inside training ----------------------------------------------------------------------
def embeddings_wanted(config, n_images: int, n_train: int) -> tuple[bool, str]:
    """The `--audit-embeddings` rule, with the reason it gives."""
    if config.audit_embeddings == "off":
        return False, "off (--audit-embeddings off)"
    if config.audit_embeddings == "on":
        return True, "on (--audit-embeddings on)"
    if not config.pretrained:
        return False, "off: --weights none gives no useful features (--audit-embeddings on forces them)"
    epochs = config.head_epochs + config.fine_tune_epochs
    training = n_train * (config.head_epochs + FINE_TUNE_COST * config.fine_tune_epochs)
    share = EMBED_COST * n_images / max(1.0, training)
    if share > EMBEDDING_SHARE:
        return False, (f"off: embedding {n_images} images would cost about {100 * share:.0f}% of {epochs} training "
                       f"epoch(s), over {100 * EMBEDDING_SHARE:.0f}% (--audit-embeddings on forces them)")
    return True, f"on: about {100 * share:.0f}% of training's cost"


def audit_for_training(config, plan):
    """Audit the run's splits and apply --leaks; returns (the record for run.json, the plan to train on)."""
    n_images = sum(len(s) for s in plan.samples.values())
    wanted, why = embeddings_wanted(config, n_images, len(plan.samples["train"]))
    embedder = _embedder(wanted, config.arch, config.weights, config.img_size, config.alpha)
    with tempfile.TemporaryDirectory(prefix="edgeclf-audit-") as work:
        result = audit_samples(plan.samples, plan.classes, config.img_size, embedder, Path(work), seed=config.seed)
    summary = result["summary"]
    summary["checks"]["embeddings"] = f"{why}" + (f"; {summary['checks']['embeddings']}" if wanted else "")
    summary["leaks"] = config.leaks
    print_summary(result)
    leaked = summary["leaked"]
    n_leaked = sum(len(files) for files in leaked.values())
    conflicts = summary["counts"]["label_conflict"]
    if conflicts:
        console.warn(f"{conflicts} label conflict(s): the same or nearly the same image under two classes; "
                     "reported in run.json, not resolved (fix the folders)")
    summary["excluded"] = {}
    if n_leaked:
        where = ", ".join(f"{len(files)} in {split}" for split, files in leaked.items())
        if config.leaks == "refuse":
            for split, files in leaked.items():
                for file in files:
                    console.info(f"  leaked ({split}): {file}")
            raise DatasetError(f"{n_leaked} scored image(s) duplicate training images ({where}; listed above)",
                               "remove them, or pass --leaks exclude (drop them from scoring) or --leaks warn")
        if config.leaks == "exclude":
            drop = {split: set(files) for split, files in leaked.items()}
            samples = {name: [s for s in members if str(s.path) not in drop.get(name, ())]
                       for name, members in plan.samples.items()}
            plan = dataclasses.replace(plan, samples=samples)
            summary["excluded"] = leaked
            console.warn(f"--leaks exclude: {n_leaked} leaked image(s) dropped from scoring ({where}); run.json lists them")
        else:
            console.warn(f"{n_leaked} scored image(s) duplicate training images ({where}): run.json reports "
                         "val/test figures as given and without them (--leaks exclude drops them, refuse stops)")
    return result, plan


def run_record(result: dict) -> dict:
    """What run.json keeps of an audit: the summary, and the findings up to RUN_FINDINGS_KEPT per kind."""
    kept, seen = [], {}
    for f in result["findings"]:
        seen[f["kind"]] = seen.get(f["kind"], 0) + 1
        if seen[f["kind"]] <= RUN_FINDINGS_KEPT:
            kept.append(f)
    return {"summary": result["summary"], "findings": kept}


def print_summary(result: dict, limit: int = 30) -> None:
    """A table of findings on the terminal (stderr during training, stdout for `edgeclf audit`)."""
    summary = result["summary"]
    images = ", ".join(f"{n} {split}" for split, n in summary["images"].items())
    console.info(f"audit: {images} image(s); embeddings {summary['checks']['embeddings']}; "
                 + (", ".join(f"{n} {kind}" for kind, n in summary["counts"].items() if n) or "no findings"))
    if summary["skipped"]:
        console.warn(f"audit skipped {len(summary['skipped'])} unreadable file(s): "
                     + ", ".join(s["path"] for s in summary["skipped"][:3]))


def findings_table(result: dict, limit: int = 40) -> None:
    rows = []
    for f in result["findings"][:limit]:
        files = f["files"]
        shown = " | ".join(_short(p) for p in files[:3]) + (f" (+{len(files) - 3})" if len(files) > 3 else "")
        rows.append([f["kind"], shown or "-", ",".join(sorted(set(f["splits"]))), ",".join(sorted(set(f["classes"]))),
                     f"{f['score']:.3f}"])
    console.table("audit findings" + (f" (first {limit} of {len(result['findings'])}; all in --json / audit.json)"
                                      if len(result["findings"]) > limit else ""),
                  ["kind", "files", "splits", "classes", "score"], rows)


def _short(path: str) -> str:
    return "/".join(Path(path).parts[-2:])
