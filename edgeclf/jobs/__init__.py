"""What each command does, start to finish: train, optimize, evaluate, export, inspect, validate, bench, demo.

The Click commands in cli/ call one function here; the building blocks live in pipeline/,
calibration/, exporters/ and devices/."""
