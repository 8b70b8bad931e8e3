"""Accuracy-budget recipes: each format declares its own escalation (`Format.budget`), and
`export --max-drop/--min-agreement` (jobs/budget.py) runs it, cheapest first.

A recipe is data: a name and the ExportSpec fields it changes. A value the budget only knows
at run time is one of the placeholders below, and the name may say `{ptq}`, `{images}`,
`{points}` or `{ops}` for what they became. A format without a `Budget` has no accuracy
budget, and the budget says so instead of borrowing another format's recipes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# placeholders for values known only at run time
DEFAULT_PTQ = "<the format's default --ptq for the run's backbone>"
DEFAULT_PTQ_WITHOUT_RANGES = "<that default without the techniques that need a full-integer model>"
EVERY_IMAGE = "<every training image>"
BUDGET_POINTS = "<the budget, in points of val top-1>"

ALWAYS = "always"
MORE_IMAGES = "more_images"  # only when the training split is larger than --calib-size
WITH_FLOAT_LAYERS = "float_layers"  # only with --allow-float-layers
FLOAT_RUN, QAT_RUN, ANY_RUN = "float", "qat", "any"


@dataclass(frozen=True)
class Step:
    name: str  # as the table and the manifest's budget block call it, e.g. "ort percentile"
    changes: dict = field(default_factory=dict)  # ExportSpec fields, values possibly placeholders
    when: str = ALWAYS
    runs_on: str = FLOAT_RUN  # a float run, a QAT run (whose learned ranges are kept), or either
    worst_ops_in_float: bool = False  # the format's `float_layers` picks ops to keep in float

    def __post_init__(self):
        if self.when not in (ALWAYS, MORE_IMAGES, WITH_FLOAT_LAYERS) or self.runs_on not in (FLOAT_RUN, QAT_RUN, ANY_RUN):
            raise ValueError(f"budget step {self.name!r}: when={self.when!r}, runs_on={self.runs_on!r}")
        if self.worst_ops_in_float and self.when != WITH_FLOAT_LAYERS:
            raise ValueError(f"budget step {self.name!r} keeps ops in float, so it needs when=WITH_FLOAT_LAYERS")


@dataclass(frozen=True)
class Budget:
    steps: tuple[Step, ...]  # cheapest first; the budget adds QAT after them for a float run
    # (run, spec, count) -> spec with the `count` ops that hurt int8 most kept in float
    float_layers: Callable | None = None

    def __post_init__(self):
        if any(s.worst_ops_in_float for s in self.steps) and self.float_layers is None:
            raise ValueError("a budget step keeps ops in float, but the format gives no float_layers")

    @property
    def allows_float_layers(self) -> bool:
        return any(step.when == WITH_FLOAT_LAYERS for step in self.steps)
