"""Better post-training int8 through the standard converters: each technique a measured option.

- `cle`: cross-layer equalization of the BatchNorm-folded Keras model (equalize.py);
- `bias`: bias correction of the weight-rounding shift (bias_correction.py);
- `ranges`: MSE-optimal activation ranges instead of absolute min/max (ranges.py, TFLite only).

`cle` and `bias` rewrite a copy of the Keras model before conversion; `ranges` changes how the
TFLite converter's calibration is turned into int8. benchmarks/ptq.py measures each alone and
combined; DEFAULT is the combination that measured best on the flowers reference run's val split.
"""
from __future__ import annotations

from edgeclf import console
from edgeclf.errors import UsageError

TECHNIQUES = ("cle", "bias", "ranges")
# Chosen on the val split of the flowers reference run (MobileNetV2 160 px, float test top-1
# 80.7%; benchmarks/ptq.py): agreement with float on val 93.9% plain, 96.7% with bias correction,
# 96.3% with bias + ranges, 94.3% with cle or ranges alone (test: 94.5%, 96.6%, 96.9%). Bias
# correction alone is best on val, the split decisions are made on, and the simplest.
DEFAULT: tuple[str, ...] = ("bias",)
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
