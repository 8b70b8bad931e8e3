"""Device names: `local`, `ssh://[user@]host[:port]`, `adb[://SERIAL]`, or a name from a devices file.

A devices file (`edgeclf.yaml` in the working directory, or ~/.config/edgeclf/devices.yaml):

    targets:
      pi:
        ssh: pi@raspberrypi.local:22     # or host/user/port keys
        python: /home/pi/venv/bin/python # Raspberry Pi OS keeps pip packages in a venv
        ssh_config: ~/.ssh/config        # optional
        emulated: false
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from edgeclf.errors import UsageError

DEVICES_FILES = (Path("edgeclf.yaml"), Path("~/.config/edgeclf/devices.yaml").expanduser())
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Target:
    kind: str  # local | ssh | adb
    name: str
    host: str | None = None
    user: str | None = None
    port: int | None = None
    serial: str | None = None
    python: str | None = None
    ssh_config: str | None = None
    emulated: bool | None = None


def devices_file() -> Path | None:
    override = os.environ.get("EDGECLF_DEVICES_FILE")
    if override:
        return Path(override).expanduser()
    return next((p for p in DEVICES_FILES if p.is_file()), None)


def load_named_targets() -> dict[str, Target]:
    path = devices_file()
    if path is None or not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"devices file {path} is not valid YAML ({str(exc).splitlines()[0]})", "fix its syntax") from exc
    targets = {}
    for name, entry in (data.get("targets") or {}).items():
        if not isinstance(entry, dict) or not NAME_PATTERN.match(str(name)):
            raise UsageError(f"devices file {path}: target '{name}' is malformed", "give each target a simple name and an ssh: or adb: entry")
        if "adb" in entry:
            targets[name] = Target("adb", name, serial=str(entry["adb"]) if entry["adb"] else None, emulated=entry.get("emulated"))
            continue
        base = parse_target(f"ssh://{entry['ssh']}") if entry.get("ssh") else Target("ssh", name, host=entry.get("host"))
        if not base.host:
            raise UsageError(f"devices file {path}: target '{name}' has no ssh host", "add `ssh: user@host` to it")
        targets[name] = Target(
            "ssh", name, host=base.host, user=entry.get("user", base.user), port=entry.get("port", base.port),
            python=entry.get("python"), ssh_config=str(Path(entry["ssh_config"]).expanduser()) if entry.get("ssh_config") else None,
            emulated=entry.get("emulated"),
        )
    return targets


def parse_target(spec: str) -> Target:
    spec = spec.strip()
    if spec in ("", "local"):
        return Target("local", "local")
    if spec == "adb":
        return Target("adb", "adb")
    if spec.startswith("adb://"):
        serial = spec[len("adb://"):]
        if not serial:
            return Target("adb", "adb")
        return Target("adb", spec, serial=serial)
    if spec.startswith("ssh://"):
        parts = urlsplit(spec)
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"bad port in --device {spec}", "use ssh://[user@]host[:port]") from None
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise UsageError(f"--device {spec} is not ssh://[user@]host[:port]", "e.g. ssh://pi@raspberrypi.local")
        return Target("ssh", spec, host=parts.hostname, user=parts.username, port=port)
    named = load_named_targets()
    if spec in named:
        return named[spec]
    known = ", ".join(named) if named else "none in a devices file"
    raise UsageError(f"unknown device '{spec}'", f"use local, ssh://[user@]host[:port], adb[://SERIAL], or a named target ({known})")
