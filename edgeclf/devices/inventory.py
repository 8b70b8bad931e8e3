"""`edgeclf devices`: what is attached or configured, whether it answers, and what it can run."""
from __future__ import annotations

import json

from edgeclf import exporters
from edgeclf.devices.targets import devices_file, load_named_targets
from edgeclf.errors import DeviceError



def probe_script() -> str:
    """Runs on the device with its own Python: which runtimes of the known formats import, and the Python version."""
    names = [m for fmt in exporters.registry().values() for m in fmt.runtime_modules] + ["numpy"]
    return (
        "import importlib.util as u, json, platform, sys\n"
        f"names = {names!r}\n"
        "print(json.dumps({'python': platform.python_version(), 'arch': platform.machine(),"
        " 'runtimes': [n for n in names if u.find_spec(n)]}))"
    )


def adb_inventory(timeout: float) -> list[dict]:
    from edgeclf.devices import adb

    try:
        adb.adb_binary()
    except DeviceError as exc:
        return [{"kind": "adb", "name": "-", "reachable": False, "status": str(exc)}]
    rows = []
    for record in adb.list_devices(timeout):
        row = {"kind": "adb", "name": f"adb://{record['serial']}", "reachable": record["state"] == "device", "status": record["state"]}
        if row["reachable"]:
            try:
                transport = adb.AdbTransport(record["serial"], connect_timeout=timeout)
                props = transport.properties()
                row.update(model=props.get("model"), abi=props.get("abi"), sdk=props.get("sdk"), soc=props.get("soc"))
            except DeviceError as exc:
                row.update(reachable=False, status=str(exc))
        rows.append(row)
    return rows


def ssh_inventory(timeout: float, ssh_config: str | None = None, explicit_file: str | None = None) -> list[dict]:
    from edgeclf.devices.ssh import SSHTransport

    rows = []
    for name, target in load_named_targets(explicit_file).items():
        if target.kind != "ssh":
            continue
        python = target.python or "python3"
        row = {"kind": "ssh", "name": name, "address": f"{target.user + '@' if target.user else ''}{target.host}", "python_path": python}
        transport = SSHTransport(target.host, target.user, target.port, ssh_config=ssh_config or target.ssh_config,
                                 python=python, connect_timeout=timeout)
        try:
            result = transport.run([python, "-c", probe_script()], timeout + 10)
            if result.returncode != 0:
                raise DeviceError(f"{python} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            row.update(json.loads(result.stdout.strip().splitlines()[-1]), reachable=True, status="ok")
        except (DeviceError, json.JSONDecodeError, IndexError) as exc:
            row.update(reachable=False, status=str(exc))
        rows.append(row)
    return rows


def inventory(timeout: float = 10, ssh_config: str | None = None, explicit_file: str | None = None) -> dict:
    from edgeclf.devices import checked_timeout

    checked_timeout(timeout)
    found = devices_file(explicit_file)
    ssh_rows = ssh_inventory(timeout, ssh_config, explicit_file)  # first: an untrusted file fails before adb is asked
    return {
        "devices_file": str(found.path) if found else None,
        "devices": [{"kind": "local", "name": "local", "reachable": True, "status": "ok"}] + adb_inventory(timeout) + ssh_rows,
    }
