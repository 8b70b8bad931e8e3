"""Everything a run directory holds, read tolerantly: what cannot be read becomes a named problem.

Only run.json is required. An older run, a manifest with missing keys or values of the wrong
type, or a bench folder with a failed device still yields a report; `Report.problems` says what
was missing. Images are shown only if they are regular files under the run's recorded data
folders: a run someone sent you cannot make the page embed your own files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf import records
from edgeclf.errors import ModelError
from edgeclf.outputs import BUNDLE, is_our_folder, is_regular
from edgeclf.pipeline.runs import LABELS_FILE, RUN_FILE, SPLIT_FILE, read_labels

RUN_KEYS = ("config", "versions", "dataset", "history", "timing", "metrics", "input")
MANIFEST_KEYS = ("target", "quant", "io", "model_file", "input", "output", "files", "accuracy", "versions", "conversion_s")

# The shape of what the page reads from each record: {key: shape} an object ("*": any other key),
# [shape] a list, NUMBER/TEXT/MATRIX leaves. A value of another shape is named as a problem and ignored.
NUMBER, TEXT, MATRIX = "a number", "a string", "a matrix of numbers"
PER_SPLIT = {"n_images": NUMBER, "top1": NUMBER, "top5": NUMBER, "confusion": MATRIX,
             "per_class": {"*": {"precision": NUMBER, "recall": NUMBER, "support": NUMBER}},
             "wrong": [{"path": TEXT, "confidence": NUMBER}]}
RUN_SHAPE = {
    "config": {}, "versions": {}, "input": {}, "labels": [TEXT], "timing": {"*": NUMBER}, "created": TEXT,
    "dataset": {"split": TEXT, "*": {"n_images": NUMBER, "per_class": {"*": NUMBER}, "skipped": [{}]}},
    "history": [{"val_loss": NUMBER, "val_accuracy": NUMBER}],
    "metrics": {"*": PER_SPLIT},
    "optimization": {"prune": {"target": NUMBER, "sparsity": {"overall": NUMBER, "per_layer": {"*": NUMBER}}},
                     "source_metrics": {"*": {"top1": NUMBER}}, "sparsity_after_qat": NUMBER},
}
TENSOR = {"dtype": TEXT, "quantization": {}}
MANIFEST_SHAPE = {
    "files": {"*": {"bytes": NUMBER, "gzip_bytes": NUMBER}}, "input": TENSOR, "output": TENSOR, "calibration": {},
    "versions": {}, "conversion_s": NUMBER, "created": TEXT,
    "accuracy": {"split": TEXT, "top1": NUMBER, "float_top1": NUMBER, "agreement": NUMBER, "n_images": NUMBER, "confusion": MATRIX},
}
RESULT = {"latency_ms": {"*": NUMBER}, "accuracy": {"top1": NUMBER, "agreement": NUMBER, "n_images": NUMBER},
          "runtime": {}, "device": {}, "init_ms": NUMBER, "peak_rss_mb": NUMBER}
BENCH_SHAPE = {"device": {}, "rows": [{"size_mb": NUMBER, "speedup": NUMBER, "top1": NUMBER, "agreement": NUMBER, "result": RESULT}]}
PROBLEMS_PER_RECORD = 12  # then one line says how many more
SAMPLES_PER_CLASS = 4
SAMPLE_CLASSES = 60  # sample images for at most this many classes (2,000 classes would be 8,000 thumbnails)


@dataclass
class Report:
    run_dir: Path
    info: dict
    labels: list[str]
    split_plan: dict | None
    exports: list[dict] = field(default_factory=list)
    benches: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @property
    def data_roots(self) -> list[Path]:
        """The image folders this run records (config and split.json); only images under them are shown."""
        config = as_dict(self.info.get("config"))
        roots = [config.get(k) for k in ("data_dir", "val_dir", "test_dir")]
        roots += [s.get("root") for s in as_dict(get(self.split_plan, "splits")).values() if isinstance(s, dict)]
        resolved = {Path(r).expanduser().resolve() for r in roots if isinstance(r, str) and r and "\0" not in r}
        return sorted(r for r in resolved if r != Path(r.anchor) and r != Path.home())  # never a whole disk or home

    def embeddable(self, path) -> Path | None:
        """`path` if it is a regular file under one of the run's data folders, else None (not shown)."""
        if not isinstance(path, (str, Path)) or "\0" in str(path):
            return None
        resolved = Path(path).expanduser().resolve()
        if not any(root in resolved.parents for root in self.data_roots):
            return None
        return resolved if is_regular(resolved) else None


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value) -> list:
    return value if isinstance(value, list) else []


def conform(record: dict, shape: dict, name: str, report: Report) -> dict:
    """`record` with every value not of its shape named as a problem (up to a dozen) and dropped."""
    wrong: list[str] = []
    _conform(record, shape, "", wrong)
    for text in wrong[:PROBLEMS_PER_RECORD]:
        report.problem(f"{name}: {text}; ignored")
    if len(wrong) > PROBLEMS_PER_RECORD:
        report.problem(f"{name}: {len(wrong) - PROBLEMS_PER_RECORD} more values of the wrong type ignored")
    return record


def _conform(value, shape, where: str, wrong: list):
    """value if it has the shape (its wrong parts removed), else None, with what was wrong appended."""
    if value is None:
        return None
    if not _fits(value, shape):
        expected = shape if isinstance(shape, str) else "an object" if isinstance(shape, dict) else "a list"
        wrong.append(f"{where.lstrip('.') or 'the record'} is {_json_type(value)}, not {expected}")
        return None
    if isinstance(shape, dict):
        for key in list(value):
            inner = shape.get(key, shape.get("*"))
            if inner is not None and _conform(value[key], inner, f"{where}.{key}", wrong) is None and value[key] is not None:
                del value[key]
    elif isinstance(shape, list):
        value[:] = [item for i, item in enumerate(value) if _conform(item, shape[0], f"{where}.{i}", wrong) is not None]
    return value


def _fits(value, shape) -> bool:
    if shape == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if shape == TEXT:
        return isinstance(value, str)
    if shape == MATRIX:
        try:
            return np.asarray(value, dtype=float).ndim == 2
        except (TypeError, ValueError, OverflowError):
            return False
    return isinstance(value, dict if isinstance(shape, dict) else list)


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(type(value), "a number")


def get(data, dotted: str, default=None):
    """data["a"]["b"]... for "a.b", or default when any step is missing or not a dict."""
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def read_json(path: Path, report: Report | None = None, kind: str | None = None) -> dict | None:
    """The JSON object at `path`, else None with the reason as a problem (raised without a report)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if report is not None:
            report.problem(f"{path} is missing")
        return None
    except json.JSONDecodeError as exc:
        if report is not None:
            report.problem(f"{path} is not valid JSON ({exc})")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        if report is not None:
            report.problem(f"{path} could not be read ({exc})")
        return None
    if not isinstance(data, dict):
        if report is not None:
            report.problem(f"{path} holds a JSON {type(data).__name__}, not an object")
        return None
    try:
        if kind:
            records.version(data, kind, path)  # a newer record is not misread
    except records.RecordError as exc:
        if report is None:
            raise
        report.problem(str(exc))
        return None
    return data


def gather(run_dir, extra_bench_dirs=(), extra_benches=()) -> Report:
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ModelError(f"run directory {run_dir} does not exist", "check the path")
    if not (run_dir / RUN_FILE).is_file():
        raise ModelError(f"{run_dir} is not an edgeclf run (no {RUN_FILE})",
                         "pass a directory written by `edgeclf train` or `edgeclf optimize`")
    report = Report(run_dir, {}, [], None)
    info = read_json(run_dir / RUN_FILE, report, kind="run")
    if info is None:  # the one file a report cannot do without: its problem is the error
        raise ModelError(report.problems[-1], "re-run `edgeclf train`, or restore the run's original run.json")
    report.info = info
    missing = [key for key in RUN_KEYS if key not in info]
    if missing:
        report.problem(f"run.json has no {', '.join(missing)} (an older or interrupted edgeclf run?)")
    conform(info, RUN_SHAPE, "run.json", report)
    report.labels = _labels(run_dir, info, report)
    if (run_dir / SPLIT_FILE).is_file():
        report.split_plan = read_json(run_dir / SPLIT_FILE, report)
    else:
        report.problem(f"{SPLIT_FILE} is missing: no sample images")
    for directory in _subdirs(run_dir / "exports"):
        if not is_our_folder(directory, BUNDLE):  # `edgeclf bundle`'s default place, beside the artefact
            report.exports.append(_guarded(_export, directory, report, "manifest.json"))
    bench_dirs = _subdirs(run_dir / "bench")
    bench_dirs += [Path(d).resolve() for d in extra_bench_dirs if Path(d).resolve() not in bench_dirs]
    for directory in bench_dirs:
        bench = _guarded(_bench, directory, report, "bench.json")
        if bench is not None:
            report.benches.append(bench)
    for name, record in extra_benches:  # measured elsewhere (edgeclf run's validate stages), never written as bench folders
        try:
            report.benches.append(_bench_entry(record, name, report))
        except WRONG_TYPE as exc:
            report.problem(f"{name} holds values of the wrong type ({type(exc).__name__}: {exc})")
    return report


WRONG_TYPE = (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError)  # a record of another shape


def _guarded(read, directory: Path, report: Report, name: str):
    """One folder whose record holds values of unexpected types costs its own entry, not the page."""
    try:
        return read(directory, report)
    except WRONG_TYPE as exc:
        report.problem(f"{directory.name}/{name} holds values of the wrong type ({type(exc).__name__}: {exc})")
        return _export(directory, report, {}) if name == "manifest.json" else None


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p.resolve() for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _labels(run_dir: Path, info: dict, report: Report) -> list[str]:
    try:
        if not is_regular(run_dir / LABELS_FILE):
            raise ModelError(f"{LABELS_FILE} is missing or not a regular file")
        return read_labels(run_dir / LABELS_FILE)
    except (OSError, ModelError) as exc:
        report.problem(f"{LABELS_FILE} could not be read ({exc}); class names come from run.json")
        return [str(x) for x in info.get("labels") or []]


# -- dataset -------------------------------------------------------------------------
def sample_images(report: Report, per_class: int = SAMPLES_PER_CLASS) -> dict[str, list[Path]]:
    """A few training images per class that still exist on disk (from split.json)."""
    plan = report.split_plan or {}
    split = as_dict(get(plan, "splits.train"))
    classes = [str(c) for c in as_list(plan.get("classes")) or report.labels][:SAMPLE_CLASSES]
    root = split.get("root")
    chosen: dict[str, list[Path]] = {name: [] for name in classes}
    if not isinstance(root, str):
        return chosen
    for entry in as_list(split.get("files")):
        try:
            rel, label = entry
            name = classes[int(label)]
        except (ValueError, TypeError, IndexError):
            continue
        if len(chosen[name]) < per_class and (path := report.embeddable(Path(root) / str(rel))):
            chosen[name].append(path)
        if all(len(paths) >= per_class for paths in chosen.values()):
            break
    return chosen


def wrong_predictions(report: Report) -> tuple[str | None, list[dict] | None]:
    """(split, misclassified images) from run.json; None when this run did not record them."""
    metrics = report.info.get("metrics") or {}
    for split in ("test", "val"):
        if split in metrics:
            wrong = metrics[split].get("wrong")
            return split, None if wrong is None else [w for w in wrong if isinstance(w, dict)]
    return None, None


def best_epoch(history: list[dict]) -> int | None:
    """1-based position of the lowest val_loss in the last stage, whose best weights the run kept."""
    if not history or any(not isinstance(h, dict) or not isinstance(h.get("val_loss"), (int, float)) for h in history):
        return None
    last_stage = history[-1].get("stage")
    positions = [i for i, h in enumerate(history) if h.get("stage") == last_stage]
    return min(positions, key=lambda i: history[i]["val_loss"]) + 1


# -- exports -------------------------------------------------------------------------
def _export(directory: Path, report: Report, manifest: dict | None = None) -> dict:
    if manifest is None:
        manifest = read_json(directory / "manifest.json", report, "manifest") or {}
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if manifest and missing:
            report.problem(f"exports/{directory.name}/manifest.json has no {', '.join(missing)}")
        conform(manifest, MANIFEST_SHAPE, f"exports/{directory.name}/manifest.json", report)
    files = manifest.get("files") or {}
    model_files = [f for name, f in files.items() if name != LABELS_FILE and isinstance(f, dict)]
    acc = manifest.get("accuracy") or {}
    agreement, n_images = acc.get("agreement"), acc.get("n_images")
    return {
        "name": directory.name,
        "dir": directory,
        "readable": bool(manifest),
        "target": manifest.get("target"),
        "quant": manifest.get("quant"),
        "io": manifest.get("io"),
        "bytes": sum(f.get("bytes", 0) for f in model_files) if model_files else None,
        "gzip_bytes": sum(f.get("gzip_bytes", 0) for f in model_files) if model_files and all("gzip_bytes" in f for f in model_files) else None,
        "split": acc.get("split"),
        "n_images": n_images,
        "top1": acc.get("top1"),
        "float_top1": acc.get("float_top1"),
        "agreement": agreement,
        "changed": round((1 - agreement) * n_images) if agreement is not None and n_images else None,
        "input": manifest.get("input") or {},
        "output": manifest.get("output") or {},
        "calibration": manifest.get("calibration"),
        "conversion_s": manifest.get("conversion_s"),
        "created": manifest.get("created"),
        "quant_cost": _quant_cost(acc, report),
        "last_mile": _last_mile(directory, manifest, report),
    }


def _last_mile(directory: Path, manifest: dict, report: Report) -> dict | None:
    """The manifest's app-mistake table (`export --last-mile`), rebuilt from closed sets."""
    if not manifest.get("last_mile"):
        return None
    from edgeclf.lastmile.sensitivity import validated

    try:
        return validated(manifest["last_mile"])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        report.problem(f"exports/{directory.name}/manifest.json has an unusable last_mile table ({exc})")
        return None


def _quant_cost(acc: dict, report: Report) -> list[dict]:
    """Per-class recall of the float model (run.json) against the artefact (its manifest's confusion)."""
    confusion = acc.get("confusion")
    per_class = as_dict(get(as_dict(report.info.get("metrics")).get(acc.get("split")), "per_class"))
    if not confusion or not per_class:
        return []
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != len(report.labels):
        return []
    rows = []
    for i, name in enumerate(report.labels):
        support = int(matrix[i].sum())
        artefact = float(matrix[i, i] / support) if support else None
        float_recall = as_dict(per_class.get(name)).get("recall")  # by key, not dotted: a class may be named a.b
        delta = artefact - float_recall if artefact is not None and float_recall is not None else None
        rows.append({"class": name, "support": support, "float_recall": float_recall, "recall": artefact, "delta": delta})
    return rows


# -- bench ---------------------------------------------------------------------------
def _bench(directory: Path, report: Report) -> dict | None:
    summary = read_json(directory / "bench.json", report, "bench")
    if summary is None:
        return None
    return _bench_entry(summary, directory.name, report, f"{directory.name}/bench.json")


def _bench_entry(summary: dict, name: str, report: Report, source: str | None = None) -> dict:
    """One bench record (read from a bench folder, or handed in) as the page shows it."""
    source = source or name
    conform(summary, BENCH_SHAPE, source, report)
    rows = summary.get("rows")
    if not isinstance(rows, list):
        report.problem(f"{source} has no rows")
        rows = []
    device = summary.get("device") if isinstance(summary.get("device"), dict) else {}
    return {
        "name": name,
        "device": device,
        "emulated": summary.get("emulated"),
        "created": summary.get("created"),
        "data": summary.get("data"),
        "runs": summary.get("runs"),
        "threads": summary.get("threads"),
        "rows": [_bench_row(row, device, summary.get("emulated")) for row in rows if isinstance(row, dict)],
    }


def _bench_row(row: dict, device: dict, emulated) -> dict:
    result = as_dict(row.get("result"))
    latency = as_dict(result.get("latency_ms"))
    acc = as_dict(result.get("accuracy"))
    runtime = as_dict(result.get("runtime"))
    dev = as_dict(result.get("device")) or device
    return {
        "format": row.get("format"),
        "quant": row.get("quant"),
        "status": row.get("status", "?"),
        "ok": row.get("status") == "ok" and bool(result),
        "device": dev.get("name") or dev.get("kind"),
        "kind": dev.get("kind"),
        "arch": dev.get("arch"),
        "cpu": dev.get("model") or dev.get("cpu"),
        "runtime": " ".join(str(x) for x in (runtime.get("name"), runtime.get("version")) if x),
        "emulated": result.get("emulated", emulated),
        "threads": result.get("threads"),
        "size_mb": row.get("size_mb"),
        "top1": acc.get("top1") if acc else row.get("top1"),
        "agreement": acc.get("agreement") if acc else row.get("agreement"),
        "n_images": acc.get("n_images"),
        "where": acc.get("where"),
        "latency": {k: latency.get(k) for k in ("min", "p50", "p90", "p95", "p99", "mean", "std")},
        "init_ms": result.get("init_ms"),
        "peak_rss_mb": result.get("peak_rss_mb"),
        "speedup": row.get("speedup"),
    }
