"""Better post-training int8 through the standard converters: each technique a measured option.

- `input`: the in-graph pixel scaling folded into the first convolution, so int8 quantizes the
  pixels once, at their own scale (input_fold.py);
- `cle`: cross-layer equalization of the BatchNorm-folded Keras model (equalize.py);
- `round`: output-aware int8 weight rounding on the converter's grid (rounding.py);
- `bias`: bias correction of the weight-rounding shift (bias_correction.py);
- `sequential`: output-aware rounding layer after layer against the inputs a simulated int8
  network gives each layer (upstream weights rounded, activations at 8 bits), and the bias
  re-centred on them (sequential.py); it replaces `round` and `bias`; TFLite and ONNX only;
- `ranges`: MSE-optimal activation ranges instead of absolute min/max (TFLite only, so it lives
  beside that exporter: exporters/tflite_ranges.py);
- `swish`: the range of every tensor that feeds a swish (EfficientNet) chosen for the least
  error of swish's output, which lets its negative tail go (exporters/tflite_ranges.py, TFLite only).

`input`, `cle`, `round`, `sequential` and `bias` rewrite a copy of the Keras model before conversion, so any
format can use them; `ranges` and `swish` change how the TFLite converter's calibration is turned into int8.
Each format's Format record lists the techniques it offers (`ptq`) and its default
(`ptq_default`, and `ptq_default_by_arch` where a backbone measured differently), the
combination that measured best on val over the flowers reference runs (benchmarks/ptq.py).
"""
from __future__ import annotations

from edgeclf import console
from edgeclf.errors import UsageError

TECHNIQUES = ("input", "cle", "round", "sequential", "bias", "ranges", "swish")  # the order they are applied in
RANGE_TECHNIQUES = ("ranges", "swish")  # applied to the converter's calibration, not to the Keras model
KERAS_TECHNIQUES = ("input", "cle", "round", "sequential", "bias")
# `sequential` rounds every weight itself and re-centres every bias on the quantized inputs.
REPLACED_BY_SEQUENTIAL = ("round", "bias")
# What a default technique falls back to when an export cannot apply it: the mean-shift
# correction that `sequential` includes (int16x8 measured best with `bias` alone).
STAND_INS = {"sequential": ("bias",)}
NONE = "none"


def parse(text: str) -> tuple[str, ...]:
    """'cle,bias' -> ('cle', 'bias') in canonical order; 'none' -> (); an empty list is an error."""
    if text.strip().lower() == NONE:
        return ()
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:  # '' is more likely a lost shell variable than a request for plain PTQ
        raise UsageError(f"--ptq {text!r} names no technique",
                         f"pass a comma list of {', '.join(TECHNIQUES)}, or none for plain PTQ")
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown:
        raise UsageError(f"--ptq {','.join(unknown)} is not a technique", f"use a comma list of {', '.join(TECHNIQUES)}, or none")
    both = [n for n in REPLACED_BY_SEQUENTIAL if n in names and "sequential" in names]
    if both:
        raise UsageError(f"--ptq sequential already does what {' and '.join(both)} would",
                         f"drop {','.join(both)} from --ptq (sequential rounds each layer and re-centres its bias)")
    return tuple(t for t in TECHNIQUES if t in names)


def for_format(fmt, text: str | None, arch: str | None = None) -> tuple[str, ...]:
    """--ptq for one export format: None is the format's measured default for the backbone
    (`Format.default_ptq(arch)`); a technique the format does not offer is a usage error."""
    if text is None:
        return fmt.default_ptq(arch)
    chosen = parse(text)
    unsupported = [t for t in chosen if t not in fmt.ptq]
    if unsupported:
        offered = ", ".join(fmt.ptq) or "no technique"
        raise UsageError(f"--ptq {','.join(unsupported)} is not available for --target {fmt.name}",
                         f"use a comma list of {offered}, or none")
    return chosen


def label(techniques) -> str:
    return ",".join(techniques) or NONE


def prepare(job, details: dict, excluded: dict[str, str] | None = None):
    """The export job with the chosen techniques' Keras model, and the techniques; fills
    details["ptq"]. `excluded` maps techniques this export cannot apply to the reason why."""
    import dataclasses

    techniques = job.spec.ptq_techniques(job.run.arch)  # resolved by the spec, which knows the format
    notes = []
    if job.spec.ptq is None and job.run.qat:
        techniques = ()
        notes.append("QAT run: its learned ranges and weights are kept as trained")
    for name, why in (excluded or {}).items():
        if name in techniques:
            if job.spec.ptq is not None:  # asked for by name: say so rather than drop it
                raise UsageError(f"--ptq {name} cannot be applied: {why}", f"drop {name} from --ptq")
            techniques = tuple(t for t in techniques if t != name)
            instead = [t for t in STAND_INS.get(name, ()) if t not in techniques and t not in excluded]
            techniques = tuple(t for t in TECHNIQUES if t in techniques or t in instead)
            stand_in = f"; {','.join(instead)} in its place" if instead else ""
            notes.append(f"{name}: {why}{stand_in}")
            console.info(f"--ptq default: {name} left out, {why}{stand_in}")
    model, keras_details = prepare_keras(job.model, job.calibration.images, techniques)
    details["ptq"] = {"recipe": label(techniques), **keras_details} | ({"notes": notes} if notes else {})
    return dataclasses.replace(job, model=model), techniques


def prepare_keras(model, images, techniques) -> tuple[object, dict]:
    """A transformed copy of `model` (raw pixels in) for the Keras techniques, or `model` itself, and details."""
    if not set(KERAS_TECHNIQUES) & set(techniques):
        return model, {}
    from edgeclf.pipeline.batchnorm import fold_batchnorm
    from edgeclf.pipeline.quant_aware import independent_copy
    from edgeclf.ptq import bias_correction, equalize, input_fold, rounding, sequential

    copy = independent_copy(model)
    details = {}
    if "input" in techniques:
        folded, details["input_fold"] = input_fold.fold_input_scaling(copy, images)
        if details["input_fold"]["folded"]:
            copy = independent_copy(folded)  # fresh layers, each in one graph only
            console.info(f"input scaling folded into {details['input_fold']['into']}")
        else:
            console.info(f"input scaling not folded: {details['input_fold']['skipped']}")
    details["batchnorm_folded"] = len(fold_batchnorm(copy))
    if "cle" in techniques:
        details["cle"] = equalize.equalize(copy)
        console.info(f"cross-layer equalization: {details['cle']['links']} conv pairs equalized")
    float_kernels = None
    if "round" in techniques:
        float_kernels, details["rounding"] = rounding.round_weights(copy, images)
        console.info(f"output-aware rounding: {details['rounding']['rounded']} layers rounded")
    if "sequential" in techniques:
        details["sequential"] = sequential.round_sequentially(copy, images)
        console.info(f"sequential rounding: {details['sequential']['rounded']} layers rounded")
    if "bias" in techniques:
        details["bias_correction"] = bias_correction.correct_biases(copy, images, reference=float_kernels)
        console.info(f"bias correction: {details['bias_correction']['corrected']} layers corrected")
    return copy, details
