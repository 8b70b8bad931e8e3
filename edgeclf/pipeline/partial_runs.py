"""A run being trained lives in `<out>.partial/` until it is complete (see pipeline/train.py).

Its state.json (written after every epoch) makes it resumable. One without a usable state
can only be discarded, and only if it holds nothing `edgeclf train` did not write.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeclf import console
from edgeclf.errors import UsageError
from edgeclf.pipeline.runs import LABELS_FILE, MODEL_FILE, RUN_FILE, SPLIT_FILE

STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoint"


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


# What a partial run can hold: its checkpoint, and the files `finish` writes before publishing.
PARTIAL_NAMES = {STATE_FILE, CHECKPOINT_DIR, MODEL_FILE, LABELS_FILE, SPLIT_FILE, RUN_FILE,
                 "training.png", "confusion_matrix.png"}
STATE_KEYS = {"config", "plan", "stage", "epoch", "history", "best", "stages_done", "timing"}


def load_state(work: Path) -> dict:
    """The checkpoint state of a partial run, or a one-line error that names --restart."""
    path = work / STATE_FILE
    restart = "pass --restart to discard it and start again"
    if work.is_symlink():  # the output rule: a link is never written through
        raise UsageError(f"{work} is a symbolic link, not an interrupted edgeclf run", "move it away or choose another --out")
    if not path.is_file():
        raise UsageError(f"the interrupted run at {work} saved no checkpoint (no {STATE_FILE})", restart)
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is unreadable ({exc})", restart) from exc
    if not isinstance(state, dict) or not STATE_KEYS <= state.keys() or not isinstance(state["config"], dict) \
            or not {"data_dir", "out"} <= state["config"].keys() or not isinstance(state["plan"], dict):
        raise UsageError(f"{path} is not an edgeclf training state", restart)
    return state


def discard_partial(work: Path) -> None:
    """Remove an interrupted run, but only one that holds nothing `edgeclf train` did not write."""
    foreign = sorted(p.name for p in work.iterdir() if p.name not in PARTIAL_NAMES
                     and not p.name.startswith(f".{STATE_FILE}.tmp-")) if work.is_dir() and not work.is_symlink() \
        else ["(not a plain folder)"]
    if foreign:
        raise UsageError(f"{work} is not an interrupted edgeclf run (it holds {foreign[0]})",
                         "move it away or choose another --out")
    console.info(f"discarding the interrupted run at {work}")
    shutil.rmtree(work)
