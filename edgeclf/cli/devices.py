"""`edgeclf devices`: list adb devices and the SSH targets of the devices file."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options


@click.command("devices")
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for each device.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh_config file to use instead of ~/.ssh/config.")
@options.devices_file
@options.json_output
def command(timeout, ssh_config, devices_file, as_json):
    """Show adb devices (serial, model, ABI) and SSH targets from edgeclf.yaml: reachable? runtimes?"""
    from edgeclf.devices.inventory import inventory

    found = inventory(timeout, ssh_config, devices_file)
    if as_json:
        console.print_json(found)
        return
    rows = []
    for d in found["devices"]:
        details = ", ".join(f"{k} {d[k]}" for k in ("address", "model", "abi", "sdk", "soc", "arch", "python") if d.get(k))
        if d.get("runtimes") is not None:
            details += f"; runtimes: {', '.join(d['runtimes']) or 'none'}"
        rows.append([d["kind"], d["name"], "yes" if d["reachable"] else "no", details, d["status"] if d["status"] != "ok" else ""])
    console.table(None, ["kind", "name", "reachable", "details", "status"], rows)
    console.out.print(f"devices file: {found['devices_file'] or 'none (edgeclf.yaml or ~/.config/edgeclf/devices.yaml)'}")
