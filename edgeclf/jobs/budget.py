"""`edgeclf export --quant int8 --max-drop P [--min-agreement A]`: the cheapest int8 recipe that
keeps the accuracy budget on the run's val split, or nothing at all.

Each attempt is one ordinary `export_run` into a hidden sibling of the artefact directory,
scored on val as every export is. The first attempt that fits is published in place of the
artefact directory, with a `budget` block in its manifest; the others are deleted as soon as
they miss. If none fits, nothing is published: the attempts go to
`<artefact dir>.budget-report.json` and the error line says how close the best one came.

Each format declares its escalation, cheapest first, as data: `BUDGET` in exporters/tflite.py,
onnx.py and openvino.py (exporters/recipes.py says how). In short: plain PTQ, the format's
improved PTQ, its own range methods, every training image for calibration, [with
--allow-float-layers: some ops in float], and then, here for every format, QAT
(`edgeclf optimize --qat`, defaults) exported as-is. A format without a budget has none.
Every recipe is full-integer (TFLite refuses float ops; ONNX and OpenVINO quantize every
conv and matmul) except the float-layers one, which runs only when the user allows it.
The QAT run is written once to RUN/exports/.budget-qat and reused by later budgets.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

from edgeclf import calibration, console, exporters, ptq
from edgeclf.artefacts import MANIFEST_FILE, write_manifest
from edgeclf.atomic import check_output, publish, publish_file
from edgeclf.outputs import BUDGET_REPORT, absolute, check_file_output, is_ours
from edgeclf.errors import ExportError, EdgeclfError, UsageError
from edgeclf.exporters.recipes import (ALWAYS, ANY_RUN, BUDGET_POINTS, DEFAULT_PTQ, DEFAULT_PTQ_WITHOUT_RANGES, EVERY_IMAGE,
                                       FLOAT_RUN, MORE_IMAGES, QAT_RUN, WITH_FLOAT_LAYERS)
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs.export import EXPORTS_DIR, accuracy_against, default_out, export_run
from edgeclf.pipeline.runs import Run

QAT_DIR = ".budget-qat"
REPORT_SUFFIX = ".budget-report.json"
FLOAT_LAYERS = 3  # ops the float-fallback recipe keeps in float: the debugger's worst


@dataclass
class BudgetSpec:
    """An accuracy budget for one int8 export: the export itself plus the limits it must keep."""

    export: ExportSpec
    max_drop: float | None = None  # percentage points of val top-1 below the float model
    min_agreement: float | None = None  # fraction of val images with the float model's top-1 label
    allow_float_layers: bool = False

    def __post_init__(self):
        if self.max_drop is None and self.min_agreement is None:
            if self.allow_float_layers:
                raise UsageError("--allow-float-layers only applies to an accuracy budget", "add --max-drop POINTS or drop it")
            return
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise UsageError(f"--max-drop {self.max_drop} is not a number of points in [0, 100]", "e.g. --max-drop 0.5")
        if self.min_agreement is not None and not 0 < self.min_agreement <= 1:
            raise UsageError(f"--min-agreement {self.min_agreement} is not a fraction in (0, 1]", "e.g. --min-agreement 0.97")
        spec = self.export
        if spec.quant != "int8":
            raise UsageError(f"an accuracy budget needs --quant int8, not {spec.quant}", "add --quant int8 or drop --max-drop/--min-agreement")
        chosen = {"--ptq": spec.ptq is not None, "--float-layers": bool(spec.float_layers),
                  "--accuracy-control": spec.accuracy_control is not None,
                  "--per-channel/--per-tensor": spec.per_channel is not None, "--calib-method": spec.calib_method != "minmax"}
        for flag, given in chosen.items():
            if given:
                raise UsageError(f"{flag} picks a recipe, and the budget picks its own", f"drop {flag} or drop the budget")
        fmt = exporters.get(spec.target)
        if fmt.budget is None:
            raise UsageError(f"--target {spec.target} offers no accuracy budget (its format declares no int8 recipes)",
                             "drop --max-drop/--min-agreement")
        if self.allow_float_layers and not fmt.budget.allows_float_layers:
            offered = [name for name, f in exporters.registry().items() if f.budget and f.budget.allows_float_layers]
            raise UsageError(f"--allow-float-layers applies only to --target {' or '.join(offered)}, not {spec.target}",
                             "drop --allow-float-layers")

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_agreement is not None

    def fits(self, accuracy: dict) -> bool:
        drop_ok = self.max_drop is None or accuracy["drop"] <= self.max_drop / 100 + 1e-9
        agreement_ok = self.min_agreement is None or accuracy["agreement"] >= self.min_agreement - 1e-9
        return drop_ok and agreement_ok

    def shortfall(self, attempt: dict) -> float:
        """How far an attempt missed, in top-1 fraction (drop over budget plus agreement under)."""
        if attempt.get("drop") is None:
            return float("inf")
        over = max(0.0, attempt["drop"] - self.max_drop / 100) if self.max_drop is not None else 0.0
        under = max(0.0, self.min_agreement - attempt["agreement"]) if self.min_agreement is not None else 0.0
        return over + under

    def describe(self) -> str:
        parts = [f"drop <= {self.max_drop:g} points" if self.max_drop is not None else None,
                 f"agreement >= {100 * self.min_agreement:.1f}%" if self.min_agreement is not None else None]
        return " and ".join(p for p in parts if p)

    def record(self) -> dict:
        return {"max_drop": None if self.max_drop is None else self.max_drop / 100, "min_agreement": self.min_agreement}


@dataclass
class Recipe:
    name: str  # what the table and manifest call it, e.g. "ptq cle,bias,ranges"
    prepare: Callable[[], tuple[Path, ExportSpec]]  # the run and spec to export; may train (QAT)


def recipes(run: Run, budget: BudgetSpec) -> list[Recipe]:
    """The format's escalation (its Format.budget) for this run, cheapest first, then QAT."""
    spec = budget.export
    fmt = exporters.get(spec.target)
    every_image = _training_image_count(run, spec)
    more = every_image if every_image > spec.calib_size else None
    default = ptq.label(fmt.default_ptq(run.arch))
    points = budget.max_drop if budget.max_drop is not None else 100 * (1 - (budget.min_agreement or 1))
    values = {DEFAULT_PTQ: default, EVERY_IMAGE: more, BUDGET_POINTS: points,
              DEFAULT_PTQ_WITHOUT_RANGES:
                  ",".join(t for t in default.split(",") if t not in ptq.RANGE_TECHNIQUES and t != ptq.NONE) or ptq.NONE}
    wanted = {ALWAYS: True, MORE_IMAGES: more is not None, WITH_FLOAT_LAYERS: budget.allow_float_layers}

    def prepare(changes: dict, worst_ops_in_float: bool) -> Callable[[], tuple[Path, ExportSpec]]:
        # built when the attempt starts, so a spec the format refuses is one missed attempt
        if worst_ops_in_float:
            return lambda: (run.path, fmt.budget.float_layers(run, dataclasses.replace(spec, **changes), FLOAT_LAYERS))
        return lambda: (run.path, dataclasses.replace(spec, **changes))

    steps: dict[str, Recipe] = {}  # by name: the default may be one of the improved recipes
    for step in fmt.budget.steps:
        if not wanted[step.when] or step.runs_on not in (ANY_RUN, QAT_RUN if run.qat else FLOAT_RUN):
            continue
        changes = {field: values.get(value, value) if isinstance(value, str) else value
                   for field, value in step.changes.items()}
        name = step.name.format(ptq=changes.get("ptq", default), images=more, points=points, ops=FLOAT_LAYERS)
        steps.setdefault(name, Recipe(name, prepare(changes, step.worst_ops_in_float)))
    if not run.qat:
        steps["QAT"] = Recipe("QAT (edgeclf optimize --qat), exported as-is", lambda: (_qat_run(run), spec))
    return list(steps.values())


def export_within_budget(run_dir, budget: BudgetSpec, overwrite: bool = False) -> dict:
    """Try the recipes in order; publish the first that fits. Raises ExportError if none does.

    The output follows `export`'s overwrite rule, checked before the first attempt."""
    run = Run.open(run_dir)
    spec = budget.export
    out = absolute(spec.out) if spec.out else default_out(run, spec)
    overwrite = overwrite or not spec.out
    images = [spec.calib_dir, *(run.plan.roots.values() if run.plan is not None else ())]
    check_output(out, MANIFEST_FILE, overwrite, inputs=images, input_runs=[run.path])
    if run.plan is None or "val" not in run.plan.samples:
        raise UsageError(f"{run.path} records no validation split, so there is nothing to hold a budget on",
                         "export without --max-drop/--min-agreement")
    report = out.with_name(out.name + REPORT_SUFFIX)
    check_file_output(report, BUDGET_REPORT, overwrite=True)  # a failed budget writes it; a file not ours stays untouched
    steps = recipes(run, budget)
    attempts: list[dict] = []
    console.info(f"accuracy budget on val: {budget.describe()}; up to {len(steps)} recipes, cheapest first")
    for number, recipe in enumerate(steps, 1):
        console.info(f"attempt {number}/{len(steps)}: {recipe.name}")
        attempt_dir = out.with_name(f".{out.name}.budget-{number}")
        check_output(attempt_dir, MANIFEST_FILE, overwrite=True)  # outside the try: a failed attempt's folder is removed
        started = time.perf_counter()
        try:
            source, attempt_spec = recipe.prepare()
            # attempt folders are ours by their hidden name; one left by a killed budget is replaced
            manifest = export_run(source, dataclasses.replace(attempt_spec, out=str(attempt_dir)), overwrite=True)
            accuracy = manifest["accuracy"]
            if Path(source) != run.path:
                # A retrained copy (QAT) is judged against the model the user asked to export,
                # not against the copy: its own float model has moved.
                accuracy = accuracy_against(run, attempt_dir / manifest["model_file"])
            if accuracy is None:
                raise ExportError("the run's val images are gone, so the attempt cannot be judged", "restore them")
        except EdgeclfError as exc:  # one recipe failing is one missed attempt, not the end
            shutil.rmtree(attempt_dir, ignore_errors=True)
            attempts.append({"recipe": recipe.name, "error": str(exc), "seconds": round(time.perf_counter() - started, 1)})
            console.warn(f"  {recipe.name} failed: {exc}")
            continue
        attempt = {"recipe": recipe.name, "top1": accuracy["top1"], "drop": accuracy["drop"],
                   "agreement": accuracy["agreement"], "changed": accuracy["changed"],
                   "seconds": round(time.perf_counter() - started, 1)}
        attempts.append(attempt)
        fits = budget.fits(accuracy)
        console.info(f"  top-1 {100 * attempt['top1']:.1f}%, drop {100 * attempt['drop']:+.2f} points, "
                     f"agreement {100 * attempt['agreement']:.1f}%, {attempt['changed']} changed -> "
                     f"{'fits' if fits else 'misses'}")
        if fits:
            return _publish(attempt_dir, out, manifest, budget, attempts, report, overwrite)
        shutil.rmtree(attempt_dir, ignore_errors=True)
    _give_up(out, budget, attempts, report)


def _publish(attempt_dir: Path, out: Path, manifest: dict, budget: BudgetSpec, attempts: list, report: Path,
             overwrite: bool) -> dict:
    manifest.pop("path", None)
    manifest["export"]["out"] = str(out)
    manifest["budget"] = budget.record() | {"attempts": attempts, "chosen": attempts[-1]["recipe"]}
    write_manifest(attempt_dir, manifest)  # files' hashes exclude the manifest, so they still hold
    publish(attempt_dir, out, MANIFEST_FILE, overwrite)
    if is_ours(report, BUDGET_REPORT):  # a failed earlier budget's report no longer describes this folder
        report.unlink()
    return manifest | {"path": str(out)}


def _give_up(out: Path, budget: BudgetSpec, attempts: list, report: Path) -> NoReturn:
    record = budget.record() | {"attempts": attempts, "chosen": None, "artefact": str(out), "published": False}
    report.parent.mkdir(parents=True, exist_ok=True)
    publish_file(report, json.dumps({**BUDGET_REPORT.stamp(), "budget": record}, indent=2) + "\n", BUDGET_REPORT, overwrite=True)
    scored = [a for a in attempts if a.get("drop") is not None]
    if not scored:
        raise ExportError(f"no int8 recipe could be exported; nothing published, attempts in {report}", "see the warnings above, or --debug")
    best = min(scored, key=budget.shortfall)
    raise ExportError(
        f"no int8 recipe kept the budget ({budget.describe()}): closest was '{best['recipe']}' with drop "
        f"{100 * best['drop']:.2f} points and agreement {100 * best['agreement']:.1f}%; nothing published, attempts in {report}",
        "loosen --max-drop/--min-agreement"
        + (", allow --allow-float-layers" if exporters.get(budget.export.target).budget.allows_float_layers
           and not budget.allow_float_layers else "")
        + ", or run `edgeclf optimize --qat --epochs 4` and export that run")


def _training_image_count(run: Run, spec: ExportSpec) -> int:
    try:
        return calibration.available(run, spec.calib_dir)
    except EdgeclfError:  # images gone: only the other recipes can run
        return 0


def _qat_run(run: Run) -> Path:
    """The run after `edgeclf optimize --qat` with its defaults, trained once and then reused."""
    from edgeclf.jobs.optimize import OptimizeConfig, optimize

    qat_dir = run.path / EXPORTS_DIR / QAT_DIR
    if (qat_dir / "run.json").is_file():
        console.info(f"  reusing the QAT run at {qat_dir}")
        return qat_dir
    console.info(f"  quantization-aware training into {qat_dir} (edgeclf optimize --qat, default epochs)")
    optimize(OptimizeConfig(run_dir=str(run.path), out=str(qat_dir), qat=True))
    return qat_dir
