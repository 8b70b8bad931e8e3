"""Two-stage fine-tuning: train the head on a frozen backbone, then fine-tune the backbone's top.

The run is built in `<out>.partial/` and renamed to `<out>` only when complete. After every
epoch the partial directory holds a checkpoint (weights, optimizer state, history, early-stopping
state), so an interrupted run continues with `--resume`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclf import console, tfenv
from edgeclf.atomic import check_output, publish, write_text_atomic
from edgeclf.errors import UsageError
from edgeclf.jobs.audit import audit_for_training
from edgeclf.jobs.audit import run_record as audit_record
from edgeclf.pipeline import distribute, streaming
from edgeclf.pipeline.backbones import (
    build_classifier,
    configure_trainable,
    get_backbone,
)
from edgeclf.pipeline.config import TrainConfig
from edgeclf.pipeline.datasets import DecodedSplit
from edgeclf.pipeline.epochs import Diverged, Epochs
from edgeclf.pipeline.partial_runs import (
    CHECKPOINT_DIR,
    STATE_FILE,
    discard_partial,
    load_state,
    partial_dir,
)
from edgeclf.pipeline.run_writer import summary, write_run
from edgeclf.pipeline.runs import RUN_FILE
from edgeclf.pipeline.splits import SplitPlan, plan_splits

# The best epoch's and each stage's final weights, as plain arrays (numpy .npz): Keras .h5 does
# not load into a distributed model, and a TensorFlow checkpoint of a compiled model carries its
# optimizer, whose restored learning-rate variable made the fine-tune stage run at the head
# stage's rate (under --distribute mirrored the flowers subset fell to chance, 0.48 -> 0.20).
BEST_WEIGHTS, STAGE_END_WEIGHTS = "best.npz", "stage_end.npz"
STREAM_DIR = "stream-cache"  # --cache disk: the decoded images, deleted with the checkpoint


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float
    fine_tune_at: int | None  # None: backbone frozen


def stages(config: TrainConfig) -> list[Stage]:
    if not config.pretrained:
        # A random backbone learns nothing while frozen: train everything at the full rate.
        return [Stage("scratch", config.head_epochs + config.fine_tune_epochs, config.lr, 0)]
    planned = [
        Stage("head", config.head_epochs, config.lr, None),
        Stage("fine_tune", config.fine_tune_epochs, config.fine_tune_lr, config.fine_tune_at),
    ]
    return [s for s in planned if s.epochs > 0]


def train(config: TrainConfig, overwrite: bool = False, restart: bool = False) -> dict:
    """Train a new run into config.out; `restart` first discards an interrupted run there."""
    role = distribute.cluster_role(config.distribute)
    work = partial_dir(Path(config.out))
    if role.chief:  # the other workers of a cluster write only into scratch directories
        check_output(Path(config.out), RUN_FILE, overwrite, inputs=_inputs(config))
        if work.exists() and not restart:
            load_state(work)  # a damaged state gets its own message, naming --restart
            raise UsageError(f"an interrupted run exists at {work}",
                             "pass --resume to continue it, or --restart to discard it and start again")
    plan = plan_splits(config)  # every dataset error surfaces here, before anything is written
    audit, plan = audit_for_training(config, plan)  # --leaks refuse stops here; exclude shrinks the plan
    if role.chief and work.exists():
        discard_partial(work)
    state = {
        "config": config.to_dict(),
        "plan": plan.to_json(),
        "stage": stages(config)[0].name,
        "epoch": 0,  # epochs finished in the current stage
        "history": [],
        "best": None,
        "stages_done": [],
        "timing": {},
        "audit": audit_record(audit),
    }
    return _execute(state, work, overwrite, role, resuming=False)


def resume(out: Path, overwrite: bool = False, cache: str | None = None, strategy: str | None = None) -> dict:
    """Continue an interrupted run from its last epoch checkpoint, with its original config
    (but the `cache` and `strategy` given now: the machines may have changed)."""
    work = partial_dir(Path(out).expanduser().resolve())
    if not work.is_dir():
        raise UsageError(f"there is no interrupted run to resume at {work}", "drop --resume to start a new run")
    state = load_state(work)
    state["config"].update({k: v for k, v in (("cache", cache), ("distribute", strategy)) if v is not None})
    config = TrainConfig.from_dict(state["config"])
    role = distribute.cluster_role(config.distribute)
    if role.chief:
        check_output(Path(config.out), RUN_FILE, overwrite, inputs=_inputs(config))
    console.info(f"resuming {work}: stage {state['stage']}, {state['epoch']} epoch(s) done")
    return _execute(state, work, overwrite, role, resuming=True)


def _inputs(config: TrainConfig) -> list:
    return [config.data_dir, config.val_dir, config.test_dir]


def _execute(state: dict, work: Path, overwrite: bool, role: distribute.Role, resuming: bool) -> dict:
    config = TrainConfig.from_dict(state["config"])
    plan = SplitPlan.from_json(state["plan"])
    strategy = distribute.strategy(config.distribute)  # before any other TensorFlow work
    with distribute.place(role, work, Path(config.out), resuming, skip=(STREAM_DIR,)) as place:
        place.work.mkdir(parents=True, exist_ok=True)
        try:
            started = time.perf_counter()
            splits = streaming.load_splits(plan.samples, plan.roots, plan.classes, config.img_size, config.cache,
                                           place.work / STREAM_DIR, resize=config.resize)
            state["timing"]["decode_s"] = round(time.perf_counter() - started, 2)
            with distribute.scope(strategy):  # model, optimizer and checkpoint variables belong to it
                trainer = Trainer(config, plan, splits, place.work, state)
                trainer.run()
            result = trainer.finish()
            publish(place.work, place.out, RUN_FILE, overwrite)
        except BaseException as exc:
            if place.chief:
                _keep_or_discard(place.work, exc)
            raise
    result["run_dir"] = config.out
    return result


def _keep_or_discard(work: Path, exc: BaseException) -> None:
    """Keep a partial run only when it holds a checkpoint worth resuming; never leave debris."""
    state_path = work / STATE_FILE
    # Resuming a diverged run would replay the same epoch at the same rate.
    if state_path.is_file() and not isinstance(exc, Diverged):
        out = work.with_name(work.name[: -len(".partial")])
        hint = f"progress is saved in {work}; continue with `edgeclf train --out {out} --resume`"
        console.warn(hint if not isinstance(exc, KeyboardInterrupt) else f"interrupted; {hint}")
        return
    shutil.rmtree(work, ignore_errors=True)


class Trainer:
    def __init__(self, config: TrainConfig, plan: SplitPlan, splits: dict[str, DecodedSplit], work: Path, state: dict):
        self.config = config
        self.plan = plan
        self.splits = splits
        self.work = work
        self.state = state
        self.tf = tfenv.tf()
        self.keras = tfenv.keras()
        self.keras.utils.set_random_seed(config.seed)
        resuming = (work / STATE_FILE).is_file()
        # A resumed run restores every weight from the checkpoint, so skip loading the backbone file.
        weights = "none" if resuming else config.weights
        self.classifier = build_classifier(
            get_backbone(config.arch), len(plan.classes), config.img_size, weights, config.alpha, config.dropout
        )
        self.model = self.classifier.model
        self.epochs = Epochs(config, splits, len(plan.classes), config.batch_size)
        self.checkpoints = work / CHECKPOINT_DIR
        self.checkpoints.mkdir(exist_ok=True)

    # -- training -------------------------------------------------------------
    def run(self) -> None:
        for stage in stages(self.config):
            if stage.name in self.state["stages_done"]:
                continue
            if self.state["stage"] != stage.name:
                self.state.update(stage=stage.name, epoch=0, best=None)
            self._run_stage(stage)
            self._save_weights(STAGE_END_WEIGHTS)
            self.state["stages_done"].append(stage.name)
            self._save_state()

    def _run_stage(self, stage: Stage) -> None:
        configure_trainable(self.classifier, stage.fine_tune_at, freeze_batchnorm=self.config.pretrained)
        optimizer = self.epochs.compile(self.model, stage.lr)
        checkpoint = self.tf.train.Checkpoint(model=self.model, optimizer=optimizer)
        if self.state["epoch"] > 0:
            checkpoint.restore(str(self.checkpoints / "last")).expect_partial()
        elif self.state["stages_done"]:
            # Resumed at a stage boundary: start from the weights the previous stage ended with.
            self._load_weights(STAGE_END_WEIGHTS)

        started = time.perf_counter() - self.state["timing"].get(f"{stage.name}_s", 0.0)
        with console.progress(transient=False) as bar:
            for epoch in range(self.state["epoch"], stage.epochs):
                record = self.epochs.run(self.model, bar, stage.name, f"{epoch + 1}/{stage.epochs}",
                                         len(self.state["history"]), stage.lr)
                self.state["history"].append(record)
                self.state["epoch"] = epoch + 1
                stop = self._track_best(record)
                checkpoint.write(str(self.checkpoints / "last"))
                self.state["timing"][f"{stage.name}_s"] = round(time.perf_counter() - started, 2)
                self._save_state()
                if stop:
                    console.info(f"early stopping {stage.name}: val_loss has not improved for {self.config.patience} epochs")
                    break
        if self.state["best"] is not None:
            self._load_weights(BEST_WEIGHTS)
            best = self.state["best"]
            # History counts epochs across stages; the progress lines count them within the stage.
            first = min(r["epoch"] for r in self.state["history"] if r["stage"] == stage.name)
            console.info(f"{stage.name}: restored epoch {best['epoch'] - first + 1}/{stage.epochs}, "
                         f"the best (val_loss {best['val_loss']:.4f})")

    def _track_best(self, record: dict) -> bool:
        """Early stopping on val_loss with best-weight restore; returns True to stop the stage."""
        best = self.state["best"]
        if best is None or record["val_loss"] < best["val_loss"]:
            self.state["best"] = {"epoch": record["epoch"], "val_loss": record["val_loss"], "wait": 0}
            self._save_weights(BEST_WEIGHTS)
            return False
        best["wait"] += 1
        return best["wait"] >= self.config.patience

    def _save_weights(self, name: str) -> None:
        path = self.checkpoints / name
        partial = path.with_name(path.name + ".tmp")
        with open(partial, "wb") as f:
            np.savez(f, *self.model.get_weights())
        os.replace(partial, path)  # an interruption leaves the previous file whole

    def _load_weights(self, name: str) -> None:
        with np.load(self.checkpoints / name) as saved:
            self.model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])

    def _save_state(self) -> None:
        write_text_atomic(self.work / STATE_FILE, json.dumps(self.state, indent=1))

    # -- results ---------------------------------------------------------------
    def finish(self) -> dict:
        timing = self.state["timing"]
        timing["total_s"] = round(sum(v for k, v in timing.items() if k.endswith("_s") and k != "total_s"), 2)
        info = write_run(self.work, self.model, self.config, self.plan, self.splits, self.state["history"], timing,
                         audit=self.state.get("audit"))
        shutil.rmtree(self.work / CHECKPOINT_DIR, ignore_errors=True)
        shutil.rmtree(self.work / STREAM_DIR, ignore_errors=True)
        (self.work / STATE_FILE).unlink()
        return summary(info)
