"""Parsers for the text that on-device tools print. Pure functions, no I/O.

``parse_benchmark_model`` reads the output of TFLite/LiteRT's ``benchmark_model``
(tensorflow/lite/tools/benchmark). Formats understood:

* TF >= 2.3 / LiteRT: ``INFO: `` prefixed lines (the prefix is optional, older
  builds printed bare lines to stderr), ``Inference timings in us: Init: ..,
  First inference: .., Warmup (avg): .., Inference (avg): ..``, one ``count=..``
  statistics line per phase (warm-up, then regular runs), optionally with
  ``p5= median= p95=`` (TF >= 2.15) or ``(all same)``, numbers in C++ ``%g``
  style (``1.24027e+06``), memory footprint and peak memory lines.
* TF <= 2.2: ``Average inference timings in us: Warmup: .., Init: .., no stats: ..``.

Give it stdout and stderr together (``2>&1``) when you can: error lines go to
stderr. Windows/pty line endings are fine.
"""

from __future__ import annotations

import re

__all__ = ["ParseError", "parse_benchmark_model"]

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|FATAL|VERBOSE):\s?")
_TIMINGS = re.compile(
    rf"Inference timings in us:\s*Init:\s*(?P<init>{_NUM}),\s*First inference:\s*(?P<first>{_NUM}),\s*"
    rf"Warmup \(avg\):\s*(?P<warmup>{_NUM}),\s*Inference \(avg\):\s*(?P<inference>{_NUM})"
)
_LEGACY_TIMINGS = re.compile(
    rf"Average inference timings in us:\s*Warmup:\s*(?P<warmup>{_NUM}),\s*Init:\s*(?P<init>{_NUM}),\s*"
    rf"(?:no stats|Inference):\s*(?P<inference>{_NUM})"
)
_STAT_LINE = re.compile(r"^count=\d+")
_STAT_FIELD = re.compile(rf"(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUM})")
_RUNNING = re.compile(r"Running benchmark for at least (?P<runs>\d+) iterations")
_SESSION = re.compile(rf"Initialized session in (?P<ms>{_NUM})\s*ms")
_MEMORY = re.compile(rf"Memory footprint delta from the start of the tool \(MB\):\s*init=(?P<init>{_NUM})\s+overall=(?P<overall>{_NUM})")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*(?P<peak>{_NUM})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\):\s*(?P<mb>{_NUM})")
_PARAM = re.compile(r"^(?P<label>[A-Za-z][A-Za-z0-9 ()#\-/.]*?):\s*\[(?P<value>.*)\]$")
_APPLIED = re.compile(r"Explicitly applied (?P<name>\S+) delegate, and the model graph will be (?P<how>completely|partially)")
_NOT_APPLIED = re.compile(r"Though (?P<name>\S+) delegate is explicitly applied, the model graph will not be")
_DEFAULT_XNNPACK = re.compile(r"Created TensorFlow Lite XNNPACK delegate for CPU")

# A line is claimed by the first of these it matches (it is then no delegate or parameter
# line); of lines of one kind, the last wins.
_VALUE_LINES = (_TIMINGS, _LEGACY_TIMINGS, _MEMORY, _PEAK, _SESSION, _MODEL_SIZE)
# (result key, line, group, converter) for the values that come straight from a line,
# in the order the result lists them.
_LINE_FIELDS = (
    ("session_init_ms", _SESSION, "ms", float),
    ("model_size_mb", _MODEL_SIZE, "mb", float),
    ("init_mb", _MEMORY, "init", float),
    ("overall_mb", _MEMORY, "overall", float),
    ("peak_mb", _PEAK, "peak", float),
)
# Summary keys and their _TIMINGS groups (microseconds).
_SUMMARY_FIELDS = (
    ("init_ms", "init"),
    ("first_inference_ms", "first"),
    ("warmup_avg_ms", "warmup"),
    ("inference_avg_ms", "inference"),
)
_RUN_STATS = ("min", "max", "avg", "std", "first", "curr", "p5", "median", "p95")
_WARMUP_STATS = ("min", "max", "std")


class ParseError(ValueError):
    """The text is not a usable benchmark_model result. ``missing`` names what was not found;
    ``errors`` holds the tool's own ERROR/FATAL lines, if it printed any."""

    def __init__(self, message: str, missing: str = "", errors: list[str] | None = None):
        self.missing = missing
        self.errors = list(errors or [])
        super().__init__(message)


def _ms(us_text: str | None) -> float | None:
    return None if us_text is None else float(us_text) / 1000.0


def _parse_stat(line: str) -> dict:
    fields = {k: float(v) for k, v in _STAT_FIELD.findall(line)}
    if "(all same)" in line or ("curr" in fields and "min" not in fields):
        curr = fields.get("curr")
        for key in ("first", "min", "max", "avg"):
            fields.setdefault(key, curr)
        fields.setdefault("std", 0.0)
    return fields


def _stat_ms(stat: dict | None, key: str) -> float | None:
    if stat is None or key not in stat:
        return None
    return stat[key] / 1000.0


def parse_benchmark_model(stdout: str) -> dict:
    """Parse benchmark_model output into numbers (times in milliseconds, memory in MB).

    Keys (None where the tool did not print the value):
      init_ms, first_inference_ms, warmup_avg_ms, inference_avg_ms   - the summary line
      count, min_ms, max_ms, avg_ms, std_ms, first_ms, curr_ms,
      p5_ms, median_ms, p95_ms                                       - the regular runs' stat line
      warmup_count, warmup_min_ms, warmup_max_ms, warmup_std_ms      - the warm-up stat line
      session_init_ms (from "Initialized session in"), model_size_mb,
      init_mb, overall_mb (memory footprint delta), peak_mb (--report_peak_memory_footprint),
      num_threads, graph, params {label: value}, delegates [names], fully_delegated (bool|None),
      warnings [WARN lines], errors [ERROR/FATAL lines], format ("tflite" | "tflite-legacy").

    Raises ParseError (a ValueError) when there is no inference timing summary,
    naming the missing line and quoting any ERROR lines the tool printed.
    """
    if not isinstance(stdout, str):
        raise TypeError("parse_benchmark_model expects the tool's output as str")
    text = stdout.replace("\r\n", "\n").replace("\r", "\n")
    stats: list[dict] = []
    params: dict[str, str] = {}
    errors: list[str] = []
    warnings: list[str] = []
    delegates: list[str] = []
    fully_delegated: bool | None = None
    found: dict[re.Pattern, re.Match] = {}

    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        level = line.split(":", 1)[0] if _PREFIX.match(line) else ""
        body = _PREFIX.sub("", line, count=1).strip()
        if level in ("ERROR", "FATAL"):
            errors.append(line)
        elif level in ("WARN", "WARNING"):
            warnings.append(line)
        if _STAT_LINE.match(body):
            stats.append(_parse_stat(body))
            continue
        m = next((m for pattern in _VALUE_LINES if (m := pattern.search(body))), None)
        if m:
            found[m.re] = m
            continue
        m = _APPLIED.search(body)
        if m:
            if m["name"] not in delegates:
                delegates.append(m["name"])
            complete = m["how"] == "completely"
            fully_delegated = complete if fully_delegated is None else (fully_delegated and complete)
            continue
        m = _NOT_APPLIED.search(body)
        if m:
            fully_delegated = False
            continue
        if _DEFAULT_XNNPACK.search(body):
            if "XNNPACK" not in delegates:
                delegates.append("XNNPACK")
            continue
        m = _PARAM.match(body)
        if m and not _RUNNING.search(body):
            params[m["label"]] = m["value"]

    timings, legacy = found.get(_TIMINGS), found.get(_LEGACY_TIMINGS)
    if timings is None and legacy is None:
        detail = f"; the tool reported: {' | '.join(errors[-5:])}" if errors else ""
        raise ParseError(
            "benchmark_model output has no 'Inference timings in us: Init: .., First inference: .., "
            f"Warmup (avg): .., Inference (avg): ..' line{detail}",
            missing="inference timings",
            errors=errors,
        )

    warmup_stat = stats[0] if stats else None
    run_stat = stats[1] if len(stats) >= 2 else None
    if timings is not None:
        summary = {key: _ms(timings[group]) for key, group in _SUMMARY_FIELDS} | {"format": "tflite"}
    else:
        summary = {
            "init_ms": _ms(legacy["init"]),
            "first_inference_ms": _stat_ms(warmup_stat, "first"),
            "warmup_avg_ms": _ms(legacy["warmup"]),
            "inference_avg_ms": _ms(legacy["inference"]),
            "format": "tflite-legacy",
        }
    threads = params.get("Num threads") or params.get("#threads used for CPU inference")
    try:
        num_threads = int(threads) if threads is not None else None
    except ValueError:
        num_threads = None
    result = {
        **summary,
        "count": int(run_stat["count"]) if run_stat and "count" in run_stat else None,
        **{f"{key}_ms": _stat_ms(run_stat, key) for key in _RUN_STATS},
        "warmup_count": int(warmup_stat["count"]) if warmup_stat and "count" in warmup_stat else None,
        **{f"warmup_{key}_ms": _stat_ms(warmup_stat, key) for key in _WARMUP_STATS},
        **{key: convert(found[line][group]) if line in found else None for key, line, group, convert in _LINE_FIELDS},
        "num_threads": num_threads,
        "graph": params.get("Graph"),
        "params": params,
        "delegates": delegates,
        "fully_delegated": fully_delegated,
        "warnings": warnings,
        "errors": errors,
    }
    return result
