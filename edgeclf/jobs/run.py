"""`edgeclf run`: the whole flow from one pipeline file, each stage cached by a key.

Stages, per backbone: train -> optimize (optional) -> one export per entry -> one validate per
(export, device); then `compare` over everything. To add a stage that follows them all (a
report, a bundle), append a builder to FINAL_STAGES: it gets the plan and returns a Stage.

A stage's key hashes its own settings, its inputs (image file lists with sizes and mtimes, the
upstream stages' keys) and the edgeclf version. The record of a finished stage lists the files
it wrote with their sizes and sha256. A stage reruns when it is forced, its key changed, one of
those files is gone or changed, it did not finish last time, or a stage it reads reruns;
otherwise it is cached.
Every stage writes its output atomically, and pipeline.json is rewritten after each one, so
an interrupted run redoes only what had not finished (training continues from its checkpoint).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeclf import __version__, console, records
from edgeclf.atomic import staged_dir, write_text_atomic
from edgeclf.outputs import PIPELINE, RESULT, check_not_in_inputs, is_ours
from edgeclf.devices.targets import folder_name
from edgeclf.errors import EdgeclfError, UsageError, failure_line, first_line
from edgeclf.jobs import compare
from edgeclf.jobs.budget import BudgetSpec, export_within_budget
from edgeclf.jobs.export import export_run
from edgeclf.jobs.fleet import run_on_devices
from edgeclf.jobs.optimize import OptimizeConfig, optimize
from edgeclf.jobs.run_file import PipelineFile
from edgeclf.jobs.validate import Prepared, measure
from edgeclf.layout import relative
from edgeclf.bundle.builder import build_bundle

STATE_FILE = "pipeline.json"
RESULT_FILE = "result.json"
DONE = ("ran", "cached")


@dataclass
class Stage:
    name: str
    kind: str  # train | optimize | export | validate | report | bundle | compare
    settings: dict  # what the stage does
    upstream: list[str]  # stages whose outputs it reads
    output: Path
    work: Callable[["Stage", dict], None] | None  # (stage, records so far) does the job; its output appears only when complete
    inputs: dict = field(default_factory=dict)  # fingerprints of what it reads besides upstream stages
    device: str | None = None
    target: object = None  # validate: the device name parsed once, when planning (devices.targets.Target)
    export: object = None  # validate: the Export it measures
    key: str = ""
    settings_hash: str = ""
    why: str | None = None  # None: cached; else why it runs
    outputs: dict | None = None  # the files it wrote: {relative path: [size, sha256]}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(folder) -> str | None:
    """The file list of an image folder with sizes and mtimes: any added, removed or edited image changes it."""
    if not folder:
        return None
    root = Path(folder)
    return _digest(sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                          for p in root.rglob("*") if p.is_file()))


def file_fingerprint(path) -> str | None:
    p = Path(path) if path else None
    return _digest([p.stat().st_size, p.stat().st_mtime_ns]) if p and p.is_file() else None


def output_record(folder: Path) -> dict[str, list]:
    """Every file a stage wrote, with its size and sha256: what must still be there for it to count as cached."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)] for p in files}


def output_problem(folder: Path, recorded) -> str | None:
    """Why a finished stage's output can no longer count as cached, or None if every recorded file is intact."""
    if not folder.is_dir():
        return "its output is missing"
    if not isinstance(recorded, dict) or not all(isinstance(v, list) and len(v) == 2 for v in recorded.values()):
        return "its output was not recorded"
    root = folder.resolve()
    for name, (size, digest) in recorded.items():
        path = folder / name
        if not path.resolve().is_relative_to(root):  # a doctored record does not make us read elsewhere
            return "its output record names a file outside it"
        if not path.is_file():
            return f"its output {name} is missing"
        if path.stat().st_size != size or _sha256(path) != digest:
            return f"its output {name} changed"
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------
def plan(pf: PipelineFile, restart: bool = False) -> list[Stage]:
    stages: list[Stage] = []
    several = len(pf.trains) > 1
    for config in pf.trains:
        arch_dir = pf.out / config.arch
        tag = f"/{config.arch}" if several else ""
        settings = {k: v for k, v in config.to_dict().items() if k not in ("out", "data_dir", "val_dir", "test_dir")}
        train = Stage(f"train{tag}", "train", settings, [], Path(config.out), lambda s, r, c=config: _train(c, restart),
                      inputs={"train images": folder_fingerprint(config.data_dir), "val images": folder_fingerprint(config.val_dir),
                              "test images": folder_fingerprint(config.test_dir),
                              "weights file": file_fingerprint(config.weights) if config.pretrained else None})
        stages.append(train)
        source = train
        if pf.optimize is not None:
            source = Stage(f"optimize{tag}", "optimize", dict(pf.optimize), [train.name], arch_dir / "optimized",
                           lambda s, r, up=train.output: optimize(OptimizeConfig(run_dir=str(up), out=str(s.output), **s.settings), overwrite=True))
            stages.append(source)
        measured = []
        for export in pf.exports:
            # under the run, as `edgeclf export` puts them, so that the run's report finds them
            spec = dataclasses.replace(export.spec, out=str(source.output / "exports" / export.name))
            settings = {k: v for k, v in spec.to_dict().items() if k != "out"}
            if export.budget is not None:
                settings["budget"] = {"max_drop": export.budget.max_drop, "min_agreement": export.budget.min_agreement,
                                      "allow_float_layers": export.budget.allow_float_layers}
            stage = Stage(f"export{tag}/{export.name}", "export", settings, [source.name], Path(spec.out),
                          lambda s, r, up=source.output, sp=spec, b=export.budget: _export(up, sp, b),
                          inputs={"calibration images": folder_fingerprint(spec.calib_dir)}, export=export)
            stages.append(stage)
            measured.append(stage)
            for device in pf.devices:
                target = pf.targets[device]
                stages.append(Stage(
                    f"validate{tag}/{export.name}@{device}", "validate",
                    {"device": dataclasses.asdict(target), "runs": pf.runs, "warmup": pf.warmup, "threads": pf.threads,
                     "options": dataclasses.asdict(pf.device_options)},
                    [stage.name], arch_dir / "validate" / f"{export.name}@{folder_name(device)}", None,
                    inputs={"images": folder_fingerprint(pf.data)}, device=device, target=target, export=export))
                measured.append(stages[-1])
        if pf.report:
            stages.append(Stage(f"report{tag}", "report", {"report": True}, [source.name] + [s.name for s in measured],
                                arch_dir / "report", lambda s, r, run=source.output, m=measured: _report(run, m, s.output)))
        for name in pf.bundle:
            export_stage = next(s for s in measured if s.kind == "export" and s.export.name == name)
            stages.append(Stage(f"bundle{tag}/{name}", "bundle", {"golden": GOLDEN}, [export_stage.name],
                                arch_dir / "bundles" / name,
                                lambda s, r, art=export_stage.output: build_bundle(art, s.output, GOLDEN, overwrite=True)))
    for build in FINAL_STAGES:
        stages.append(build(pf, stages))
    _check_distinct_outputs(stages)
    return stages


def _check_distinct_outputs(stages: list[Stage]) -> None:
    """Two stages writing one folder would lose a result; compared without case, as on macOS and Windows."""
    owner: dict[str, Stage] = {}
    for stage in stages:
        other = owner.setdefault(str(stage.output).casefold(), stage)
        if other is not stage:
            raise UsageError(f"stages {other.name} and {stage.name} would write the same folder {stage.output}",
                             "name each device once (names that differ only in case are one folder on some systems)")


def _compare_stage(pf: PipelineFile, stages: list[Stage]) -> Stage:
    measured = [s.name for s in stages if s.kind in ("export", "validate")]
    return Stage("compare", "compare", {"table": compare.COLUMNS}, measured, pf.out / "compare",
                 lambda s, records, stages=stages: compare.write(_comparison_entries(pf, stages, records), s.output))


FINAL_STAGES = [_compare_stage]
AFTER_DEVICES = ("report", "bundle", "compare")  # stages that read what the devices measured
GOLDEN = 20


def _report(run_dir: Path, measured: list[Stage], output: Path) -> None:
    """The run's `edgeclf report` page, with this pipeline's device results beside the run's benches."""
    from edgeclf.report import REPORT_FILE, write_report

    with staged_dir(output, REPORT_FILE, overwrite=True) as staging:
        by_device: dict[str, list] = {}
        for stage in measured:
            result_file = stage.output / RESULT_FILE
            if stage.kind == "validate" and result_file.is_file():
                result = json.loads(result_file.read_text())
                records.version(result, "result", result_file)
                by_device.setdefault(stage.device, []).append(
                    {"format": stage.export.spec.target, "quant": stage.export.spec.quant, "status": "ok", "result": result,
                     "size_mb": round(result["model_bytes"] / 1e6, 3)})
        benches = [(f"edgeclf run on {device}", {"format": records.tag("bench"), "device": rows[0]["result"]["device"],
                                                  "emulated": rows[0]["result"]["emulated"], "rows": rows})
                   for device, rows in by_device.items()]
        write_report(run_dir, out=staging / REPORT_FILE, extra_benches=benches)


def _keys(stages: list[Stage]) -> None:
    by_name = {s.name: s for s in stages}
    for stage in stages:
        stage.settings_hash = _digest(stage.settings)
        upstream = {name: by_name[name].key for name in stage.upstream}
        stage.key = _digest({"kind": stage.kind, "settings": stage.settings_hash, "inputs": stage.inputs,
                             "upstream": upstream, "edgeclf": __version__})


def decide(stages: list[Stage], previous: dict, force: str | None) -> None:
    """Mark each stage cached (why None) or give the reason it runs."""
    if force and not any(_matches(s.name, force) for s in stages):
        raise UsageError(f"--force {force} names no stage", f"use one of: {', '.join(s.name for s in stages)}")
    by_name = {s.name: s for s in stages}
    for stage in stages:
        prev = previous.get(stage.name)
        rerun_upstream = [name for name in stage.upstream if by_name[name].why is not None]
        changed_inputs = [k for k, v in stage.inputs.items() if prev and (prev.get("inputs") or {}).get(k) != v]
        if force and _matches(stage.name, force):
            stage.why = "--force"
        elif rerun_upstream:
            stage.why = f"{rerun_upstream[0]} reruns"
        elif prev is None:
            stage.why = "never ran"
        elif prev.get("status") not in DONE:
            stage.why = f"it {prev.get('status')} last time"
        elif prev.get("key") != stage.key:
            stage.why = ("its settings changed" if prev.get("settings_hash") != stage.settings_hash
                         else f"its inputs changed ({', '.join(changed_inputs)})" if changed_inputs
                         else "an upstream stage or the edgeclf version changed")
        else:
            stage.why = output_problem(stage.output, prev.get("outputs"))
            stage.outputs = prev.get("outputs") if stage.why is None else None


def _matches(name: str, force: str) -> bool:
    return name == force or name.startswith(force + "/") or name.startswith(force + "@")


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------
def run(pf: PipelineFile, force: str | None = None, dry_run: bool = False, restart: bool = False) -> dict:
    """Run the pipeline; `restart` discards interrupted trainings (their .partial folders) instead of resuming them."""
    check_not_in_inputs(pf.out, input_folders(pf))  # before anything is written, even the plan's folders
    stages = plan(pf, restart)
    _keys(stages)
    previous = _previous(pf.out)
    decide(stages, previous, force)
    if dry_run:
        return {"file": str(pf.path.resolve()), "out": str(pf.out), "dry_run": True, "stages": [
            {"name": s.name, "key": s.key, "status": "cached" if s.why is None else "will run", "why": s.why,
             "output": relative(s.output, pf.out)} for s in stages]}
    return _Runner(pf, stages, previous).run()


def input_folders(pf: PipelineFile) -> list:
    """Every image folder the pipeline reads: `out:` may be none of them, nor inside or around one."""
    return [pf.data, *(e.spec.calib_dir for e in pf.exports),
            *(folder for c in pf.trains for folder in (c.data_dir, c.val_dir, c.test_dir))]


def _previous(out: Path) -> dict:
    """The last run's stage records, after checking `out` is ours to write in."""
    state = out / STATE_FILE
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise UsageError(f"out {out} exists and is not a plain folder", "choose another `out:` in the pipeline file")
    if out.is_dir() and any(out.iterdir()) and not is_ours(state, PIPELINE):
        raise UsageError(f"out {out} holds files that `edgeclf run` did not write", "choose another `out:` or empty that folder")
    if not state.is_file():
        return {}
    try:
        record = json.loads(state.read_text())
        records.version(record, "pipeline", state)  # a newer edgeclf's state is not ours to overwrite
        return {r["name"]: r for r in record["stages"]}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        console.warn(f"{state} is unreadable; every stage runs again")
        return {}


class _Runner:
    def __init__(self, pf: PipelineFile, stages: list[Stage], previous: dict):
        self.pf, self.stages = pf, stages
        self.records = {s.name: previous[s.name] for s in stages if s.name in previous}  # kept for unfinished stages
        self.position = {s.name: i for i, s in enumerate(stages)}

    def run(self) -> dict:
        self.pf.out.mkdir(parents=True, exist_ok=True)
        self._save()  # first, so that a run interrupted in its first stage is still ours to resume
        device_stages = [s for s in self.stages if s.kind == "validate"]
        final = [s for s in self.stages if s.kind in AFTER_DEVICES]
        for stage in self.stages:
            if stage.kind != "validate" and stage not in final:
                self._run_here(stage)
        self._run_on_devices(device_stages)
        for stage in final:
            self._run_here(stage)
        return self.state()

    def state(self) -> dict:
        return {**PIPELINE.stamp(), "file": str(self.pf.path.resolve()), "out": str(self.pf.out), "edgeclf": __version__,
                "stages": [self.records[s.name] for s in self.stages if s.name in self.records]}

    def _record(self, stage: Stage, status: str, seconds: float = 0.0, error: str | None = None) -> None:
        if status == "ran":
            stage.outputs = output_record(stage.output)
        record = {"name": stage.name, "key": stage.key, "status": status, "seconds": round(seconds, 2),
                  "output": relative(stage.output, self.pf.out), "why": stage.why,
                  "settings_hash": stage.settings_hash, "inputs": stage.inputs}
        if status in DONE:
            record["outputs"] = stage.outputs
        if error:
            record["error"] = error
        self.records[stage.name] = record
        line = {"ran": f"ran ({seconds:.1f} s)", "cached": "cached", "failed": f"failed: {error}", "skipped": f"skipped: {error}"}
        console.info(f"[{self.position[stage.name] + 1}/{len(self.stages)}] {stage.name}: {line[status]}")
        self._save()

    def _save(self) -> None:
        write_text_atomic(self.pf.out / STATE_FILE, json.dumps(self.state(), indent=2) + "\n")

    def _blocked(self, stage: Stage) -> str | None:
        for name in stage.upstream:
            if self.records.get(name, {}).get("status") in ("failed", "skipped"):
                return f"{name} did not finish"
        return None

    def _stage(self, name: str) -> Stage:
        return self.stages[self.position[name]]

    def _run_here(self, stage: Stage) -> None:
        blocked = self._blocked(stage)
        finished = [n for n in stage.upstream if self.records.get(n, {}).get("status") in DONE]
        if blocked and (stage.kind not in ("compare", "report") or not finished):  # they still show what finished
            return self._record(stage, "skipped", error=blocked)
        if stage.why is None:
            return self._record(stage, "cached")
        console.info(f"[{self.position[stage.name] + 1}/{len(self.stages)}] {stage.name}: running ({stage.why})")
        started = time.perf_counter()
        try:
            stage.work(stage, self.records)
        except (EdgeclfError, OSError) as exc:  # the disk or the folder said no: this stage failed, the others go on
            return self._record(stage, "failed", time.perf_counter() - started, failure_line(exc))
        self._record(stage, "ran", time.perf_counter() - started)

    def _run_on_devices(self, stages: list[Stage]) -> None:
        prepared, jobs = {}, {}
        for stage in stages:
            blocked = self._blocked(stage)
            if blocked or stage.why is None:
                self._record(stage, "skipped" if blocked else "cached", error=blocked)
                continue
            export_dir = self._stage(stage.upstream[0]).output
            if export_dir not in prepared:
                try:  # images and the float reference, once per export, here rather than in each device's thread
                    prepared[export_dir] = Prepared(export_dir, self.pf.data)
                    prepared[export_dir].reference()
                except (EdgeclfError, OSError) as exc:
                    prepared[export_dir] = failure_line(exc)
            if isinstance(prepared[export_dir], str):
                self._record(stage, "failed", error=prepared[export_dir])
                continue
            jobs.setdefault(stage.device, []).append((stage, prepared[export_dir]))
        runnable = {device: [lambda st=st, p=p: self._validate(st, p) for st, p in items] for device, items in jobs.items()}

        def done(outcome):
            stage = jobs[outcome.device][outcome.index][0]
            self._record(stage, "ran" if outcome.ok else "failed", outcome.seconds, outcome.error)

        if len(runnable) == 1:  # fleet re-raises surprises for one device; here they must become rows too
            runnable = {d: [_catching(job) for job in js] for d, js in runnable.items()}
        run_on_devices(runnable, on_done=done)

    def _validate(self, stage: Stage, prepared: Prepared) -> None:
        result = measure(prepared, stage.target, self.pf.measure)
        with staged_dir(stage.output, RESULT_FILE, overwrite=True) as staging:
            (staging / RESULT_FILE).write_text(console.to_json(RESULT.stamp() | result) + "\n")


def _catching(job: Callable) -> Callable:
    def wrapped():
        try:
            return job()
        except (EdgeclfError, OSError):
            raise
        except Exception as exc:
            raise EdgeclfError(f"unexpected {type(exc).__name__}: {first_line(exc)}") from exc
    return wrapped


def _train(config, restart: bool = False) -> None:
    """Train, or continue this very config's interrupted run from its last epoch checkpoint
    (unless `restart`). A damaged checkpoint state is a one-line error that names --restart."""
    from edgeclf.jobs import train as training
    from edgeclf.pipeline.partial_runs import discard_partial, load_state

    out = Path(config.out)
    partial = training.partial_dir(out)
    if not restart and (partial / training.STATE_FILE).exists():
        state = load_state(partial)
        if _digest(state["config"]) == _digest(json.loads(json.dumps(config.to_dict()))):
            training.resume(out, overwrite=True)
            return
    if partial.exists():  # an interrupted run of other settings, or one to restart, inside our own out folder
        discard_partial(partial)
    training.train(config, overwrite=True)


def _export(run_dir: Path, spec, budget: BudgetSpec | None) -> None:
    if budget is None:
        export_run(run_dir, spec, overwrite=True)
    else:
        export_within_budget(run_dir, dataclasses.replace(budget, export=spec), overwrite=True)


def _comparison_entries(pf: PipelineFile, stages: list[Stage], records: dict) -> list[dict]:
    """What the comparison table reads: one entry per (backbone, export, device), with why one did not finish."""
    by_name = {s.name: s for s in stages}
    entries = []
    for config in pf.trains:
        tag = f"/{config.arch}" if len(pf.trains) > 1 else ""
        source = by_name.get(f"optimize{tag}") or by_name[f"train{tag}"]
        for export in pf.exports:
            export_stage = by_name[f"export{tag}/{export.name}"]
            base = {"backbone": config.arch, "weights": config.weights, "alpha": config.alpha, "run_dir": source.output,
                    "optimize": pf.optimize, "export": export.name, "target": export.spec.target, "quant": export.spec.quant,
                    "export_dir": export_stage.output}
            for device in pf.devices or [None]:
                stage = by_name.get(f"validate{tag}/{export.name}@{device}")
                failed = [records.get(s.name, {}) for s in (export_stage, stage) if s is not None]
                error = next((r.get("error") for r in failed if r.get("status") in ("failed", "skipped")), None)
                entries.append({**base, "device": device, "result_file": stage.output / RESULT_FILE if stage else None,
                                "error": error})
    return entries
