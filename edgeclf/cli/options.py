"""Options shared by several commands, defined once."""
from __future__ import annotations

import click

from edgeclf.devices.runners.benchmark_model import DELEGATES
from edgeclf.pipeline.distribute import STRATEGIES
from edgeclf.pipeline.streaming import CACHE_MODES



class LiveChoice(click.Choice):
    """A Choice read from a registry when used, so a format registered after import is offered too."""

    def __init__(self, source):
        self._source = source
        super().__init__([])

    @property
    def choices(self):
        return tuple(self._source())

    @choices.setter
    def choices(self, _value):
        pass


json_output = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")
overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output directory (only once the new one is complete).")
# `edgeclf train` and `edgeclf optimize`: where decoded images live, and over which devices to train.
cache = click.option(
    "--cache", default="auto", show_default=True, type=click.Choice(CACHE_MODES),
    help="Decoded images: in memory, in a file inside the run being written (disk), decoded on every read (none); "
         "auto: memory while they fit a quarter of the available memory, else disk.")
distribute = click.option(
    "--distribute", default="none", show_default=True, type=click.Choice(STRATEGIES),
    help="mirrored: every local GPU; multi-worker: the cluster in TF_CONFIG. --batch-size is global.")
# Paths are checked by the config records, which give one clear line instead of click's usage dump.
folder = click.Path(path_type=str)


devices_file = click.option(
    "--devices-file", type=click.Path(dir_okay=False),
    help="Devices file naming targets; trusted, unlike an edgeclf.yaml merely found in the working directory.")


def device_options(command):
    """--device and the options that say how to reach and run on it."""
    for option in reversed([
        click.option("--device", "devices", multiple=True, default=("local",), show_default=True,
                     help="local, ssh://[user@]host[:port], adb[://SERIAL], or a target or group name from edgeclf.yaml; "
                          "repeat it to measure on several devices in parallel."),
        click.option("--runs", default=100, show_default=True, type=int, help="Timed invocations."),
        click.option("--warmup", default=10, show_default=True, type=int, help="Untimed invocations first."),
        click.option("--threads", type=int, help="Inference threads [default: the runtime's choice]."),
        click.option("--timeout", default=600.0, show_default=True, type=float, help="Seconds before a device command is abandoned."),
        click.option("--remote-python", help="Python on an SSH device (e.g. a venv's bin/python on Raspberry Pi OS)."),
        click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh_config file to use instead of ~/.ssh/config."),
        devices_file,
        click.option("--insecure-host-key", is_flag=True, help="Skip SSH host-key checking (only for throw-away test boards)."),
        click.option("--benchmark-binary", help="Android: path to TFLite's benchmark_model [env: EDGECLF_BENCHMARK_MODEL]."),
        click.option("--delegate", default="xnnpack", show_default=True, type=click.Choice(DELEGATES), help="Android: benchmark_model delegate."),
        click.option("--emulated/--not-emulated", default=None, help="Label the device's latency as measured under emulation [default: detect]."),
    ]):
        command = option(command)
    return command


def pop_device_options(settings: dict):
    """Split the device options out of a command's keyword arguments."""
    from edgeclf.devices import DeviceOptions

    return DeviceOptions(
        remote_python=settings.pop("remote_python"), ssh_config=settings.pop("ssh_config"),
        devices_file=settings.pop("devices_file"),
        insecure_host_key=settings.pop("insecure_host_key"), benchmark_binary=settings.pop("benchmark_binary"),
        delegate=settings.pop("delegate"), emulated=settings.pop("emulated"), timeout=settings.pop("timeout"),
    )
