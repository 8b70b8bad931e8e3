"""Host-side runners: how a model is measured on a device (the keys of exporters.RUNNERS).

`python` pushes devices/runner.py and the format's runtime file to a board with Python;
`benchmark_model` drives TFLite's own tool on Android.
"""
