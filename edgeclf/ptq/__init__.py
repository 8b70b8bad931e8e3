"""Better post-training int8 through the standard converters: each technique a measured option.

- `cle`: cross-layer equalization of the BatchNorm-folded Keras model (equalize.py);
- `bias`: bias correction of the weight-rounding shift (bias_correction.py);
- `ranges`: MSE-optimal activation ranges instead of absolute min/max (ranges.py, TFLite only).

`cle` and `bias` rewrite a copy of the Keras model before conversion; `ranges` changes how the
TFLite converter's calibration is turned into int8. benchmarks/ptq.py measures each alone and
combined; DEFAULT is to become the combination that measures best on the flowers reference run.
"""
from __future__ import annotations

from edgeclf import console
from edgeclf.errors import UsageError

TECHNIQUES = ("cle", "bias", "ranges")
# Not yet measured on the flowers reference run (benchmarks/ptq.py): until it is, the default
# stays the converter's plain min/max PTQ, and each technique is opt-in.
DEFAULT: tuple[str, ...] = ()
NONE = "none"


def parse(text: str | None) -> tuple[str, ...]:
    """'cle,bias' -> ('cle', 'bias') in canonical order; 'none' -> (); None -> DEFAULT."""
    if text is None:
        return DEFAULT
    if text.strip().lower() in (NONE, ""):
        return ()
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown:
        raise UsageError(f"--ptq {','.join(unknown)} is not a technique", f"use a comma list of {', '.join(TECHNIQUES)}, or none")
    return tuple(t for t in TECHNIQUES if t in names)


def label(techniques) -> str:
    return ",".join(techniques) or NONE


def prepare_keras(model, images, techniques) -> tuple[object, dict]:
    """A transformed copy of `model` (raw pixels in) for `cle`/`bias`, or `model` itself, and details."""
    if not {"cle", "bias"} & set(techniques):
        return model, {}
    from edgeclf.pipeline.batchnorm import fold_batchnorm
    from edgeclf.pipeline.quant_aware import independent_copy
    from edgeclf.ptq import bias_correction, equalize

    copy = independent_copy(model)
    details = {"batchnorm_folded": len(fold_batchnorm(copy))}
    if "cle" in techniques:
        details["cle"] = equalize.equalize(copy)
        console.info(f"cross-layer equalization: {details['cle']['links']} conv pairs equalized")
    if "bias" in techniques:
        details["bias_correction"] = bias_correction.correct_biases(copy, images)
        console.info(f"bias correction: {details['bias_correction']['corrected']} layers corrected")
    return copy, details
