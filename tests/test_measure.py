"""How a model is measured (devices.Measure) is one record, checked once where a job starts."""
from __future__ import annotations

import pytest

from edgeclf.devices import DeviceOptions, Measure
from edgeclf.errors import UsageError


@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "--runs must be at least 1"),
    ({"warmup": -1}, "--warmup at least 0"),
    ({"threads": 0}, "--threads must be at least 1"),
    ({"runs": True}, "--runs True is not a whole number"),
    ({"threads": 1.5}, "--threads 1.5 is not a whole number"),
])
def test_a_measure_checks_itself(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Measure(**kwargs)


def test_every_measuring_job_refuses_bad_counts_before_any_work(tmp_path):
    from edgeclf.bundle.check import check_bundle
    from edgeclf.jobs.bench import bench
    from edgeclf.jobs.validate import validate, validate_on_devices

    missing = tmp_path / "not-there"  # reading it would be an error of another kind
    for call in (lambda: validate(missing, runs=0), lambda: validate_on_devices(missing, ["local"], threads=0),
                 lambda: bench(missing, [("tflite", "fp32")], warmup=-1), lambda: check_bundle(missing, threads=0)):
        with pytest.raises(UsageError, match="must be at least|at least 0"):
            call()
    assert Measure(3, 1, None, DeviceOptions()).options == DeviceOptions()
