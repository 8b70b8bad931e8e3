"""Replay of the raw golden images, shipped unchanged in every bundle by `edgeclf bundle`.

check_golden.py calls `replay`. Each raw source file is decoded and resized by training's own
code (preprocess.py, beside this file), or its tensor is taken from what an app produced
(--tensors DIR: one `<vector id>.npy` per raw image); the tensor is compared with the expected
one (mean and max level difference, tolerance measured at bundle time), a differing tensor is
matched against the tensors the known app mistakes make from the same file, and the outputs
(the model's, or the app's with --outputs DIR) are compared with the expected ones.
Needs numpy and Pillow only (OpenCV or skia-python only if training resized with them).
"""
import importlib.util
import os

import numpy as np

import preprocess


def levels(tensor, quantization):
    """A model-input tensor in 0-255 levels: dequantized when the tensor is quantized."""
    values = np.asarray(tensor, dtype=np.float64)
    if quantization and np.asarray(tensor).dtype.kind in "iu":
        values = (values - quantization["zero_point"]) * quantization["scale"]
    return values


def difference(got, expected, quantization):
    diff = np.abs(levels(got, quantization).reshape(-1) - levels(expected, quantization).reshape(-1))
    return float(diff.mean()), float(diff.max())


def diagnose(got, candidates, quantization, tolerance):
    """The known mistakes whose tensor `got` matches, best first: [(name, mean difference)]."""
    distances = sorted((difference(got, tensor, quantization)[0], name) for name, tensor in candidates.items()
                       if np.asarray(tensor).size == np.asarray(got).size)
    return [(name, mean) for mean, name in distances if mean <= tolerance["mean"]], distances[:1]


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def cost(golden, name):
    raw = golden["raw"]
    for mistake in raw["mistakes"]:
        if mistake["name"] == name:
            if mistake.get("top1") is None:
                return f"{mistake['what']}; cost not measured"
            return (f"{mistake['what']}; measured on the {raw['cost_split']} split: top-1 {_pct(mistake['top1'])} "
                    f"instead of {_pct(raw['training_top1'])}, agreement with float {_pct(mistake['agreement'])}"
                    + (" (within noise)" if mistake.get("within_noise") else ""))
    return name


def _python_pipeline(here, vector, golden):
    resize = golden["preprocessing"]["resize"]
    module = preprocess.RESIZERS[resize["name"]][1]
    if importlib.util.find_spec(module) is None:
        return None, f"training resized with {resize['name']} ({resize['library']}), which is not installed here"
    image = preprocess.decode_rgb(os.path.join(here, vector["file"]))
    size = golden["input"]["shape"][1]
    return preprocess.fit(image, size, resize["name"], resize["aspect"])[None], None


def _load_app_file(folder, vector, what):
    path = os.path.join(folder, vector["id"] + ".npy")
    if not os.path.isfile(path):
        return None, f"no {what} {path}"
    return np.load(path, allow_pickle=False), None


def replay(here, golden, run, to_input_tensor, output_tolerance, tensors_dir=None, outputs_dir=None, say=print):
    """Check every raw golden image; returns the number of failures."""
    raw = golden.get("raw")
    if not raw or not raw["vectors"]:
        say("raw golden images: none in this bundle")
        return 0
    quantization = golden["input"]["quantization"]
    tol = raw["tolerance"]
    source = f"the app's tensors in {tensors_dir}" if tensors_dir else "training's pipeline (preprocess.py) here"
    say(f"raw golden images: {raw['count']}, tensors from {source}; tolerance mean {tol['mean']} / max {tol['max']} levels")
    failures = 0
    for vector in raw["vectors"]:
        expected = np.load(os.path.join(here, vector["tensor"]))
        if tensors_dir:
            got, problem = _load_app_file(tensors_dir, vector, "tensor")
            if got is not None:
                got = got.reshape(expected.shape) if got.size == expected.size else got
        else:
            pixels, problem = _python_pipeline(here, vector, golden)
            got = None if pixels is None else to_input_tensor(pixels)
        if got is None:
            say(f"FAIL raw {vector['id']}: {problem}")
            failures += 1
            continue
        if got.shape != expected.shape:
            say(f"FAIL raw {vector['id']}: tensor shape {list(got.shape)}, expected {list(expected.shape)}")
            failures += 1
            continue
        mean, worst = difference(got, expected, quantization)
        tensor_ok = mean <= tol["mean"] and worst <= tol["max"]
        notes = [f"tensor mean {mean:.3f} / max {worst:.0f} levels"]
        if not tensor_ok:
            notes.append("diagnosis: " + diagnosis(here, vector, golden, got, quantization, tol, to_input_tensor))
        if outputs_dir:
            output, problem = _load_app_file(outputs_dir, vector, "output")
        elif got.dtype == expected.dtype:
            output, problem = np.asarray(run(got)), None
        else:
            output, problem = None, f"tensor dtype {got.dtype} is not the model's {expected.dtype}"
        # A tensor that passes without being identical moves the outputs by up to what the measured
        # decoders' tensors did, on top of the runtime's own tolerance.
        allowed = output_tolerance if np.array_equal(got, expected) else output_tolerance + tol.get("output", 0)
        outputs_ok = output is not None and outputs_match(output, vector, golden, here, allowed, notes)
        if output is None:
            notes.append(f"outputs not checked: {problem}")
        failed = not (tensor_ok and outputs_ok)
        failures += failed
        say(f"{'FAIL' if failed else 'PASS'} raw {vector['id']}: " + "; ".join(notes))
    return failures


def diagnosis(here, vector, golden, got, quantization, tol, to_input_tensor):
    # uint8 entries are the pixels the mistake makes (turned into the model's tensor here); float
    # entries are the values a normalisation mistake feeds the model as they are.
    with np.load(os.path.join(here, vector["mistakes"])) as stored:
        candidates = {name: to_input_tensor(stored[name]) if stored[name].dtype == np.uint8 else stored[name]
                      for name in stored.files}
    matches, nearest = diagnose(got, candidates, quantization, tol)
    if not matches:
        near = f"; nearest known mistake {nearest[0][1]} at mean {nearest[0][0]:.2f}" if nearest else ""
        return f"unknown (no known mistake within the tolerance{near})"
    also = f" (as close: {', '.join(name for name, _ in matches[1:])})" if len(matches) > 1 else ""
    return f"{matches[0][0]}: {cost(golden, matches[0][0])}{also}"


def outputs_match(output, vector, golden, here, tolerance, notes):
    want = np.load(os.path.join(here, vector["output"]))[0].astype(np.float64)
    output = np.asarray(output, dtype=np.float64).reshape(-1)
    if output.size != want.size:
        notes.append(f"outputs have {output.size} values, expected {want.size}")
        return False
    deviation = float(np.abs(output - want).max())
    tied = {golden["labels"][i] for i in np.flatnonzero(want >= want.max() - 2 * tolerance)}
    top1 = golden["labels"][int(np.argmax(output))]
    notes.append(f"outputs top-1 {top1} (expected {vector['expected_top1']}), max deviation {deviation:g}")
    return deviation <= tolerance and top1 in tied
