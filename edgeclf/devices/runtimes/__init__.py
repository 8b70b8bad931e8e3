"""Model runtimes for the on-device runner, one self-contained file per export format.

Each file is pushed to devices beside runner.py and loaded from its path, so it may import
only the standard library, numpy and its own runtime. It defines `Model(path, threads)` with
`runtime`, `runtime_version`, `init_ms`, `input_shape`, `invoke(pixels) -> probabilities` and
`invoke_raw(pixels)` (the output tensor as the model produced it, e.g. uint8 before
dequantization: what golden-vector checks compare), and raises ImportError when its runtime
is not installed.
"""
