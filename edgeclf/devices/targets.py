"""Device names: `local`, `ssh://[user@]host[:port]`, `adb[://SERIAL]`, or a name from a devices file.

A devices file (`--devices-file PATH`, $EDGECLF_DEVICES_FILE, `edgeclf.yaml` in the working
directory, or ~/.config/edgeclf/devices.yaml, first found wins):

    targets:
      pi:
        ssh: pi@raspberrypi.local:22     # or host/user/port keys
        python: /home/pi/venv/bin/python # Raspberry Pi OS keeps pip packages in a venv
        ssh_config: ~/.ssh/config        # optional; not from an untrusted file
        emulated: false
    groups:
      pis: [pi4, pi5]                    # `--device pis` measures on both, in parallel

An `edgeclf.yaml` that merely sits in the working directory came with whatever folder the
user is in (a cloned repository, say), so it is untrusted: it may not use keys that make the
local ssh client read another config file, and through it run local commands (ProxyCommand,
LocalCommand, Match exec). Naming the file with --devices-file trusts it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from edgeclf.errors import UsageError, first_line

CWD_DEVICES_FILE = Path("edgeclf.yaml")
HOME_DEVICES_FILE = "~/.config/edgeclf/devices.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys that make the local ssh client read a config of the file's choosing (ProxyCommand,
# LocalCommand, Match exec, IdentityFile...): only from a file the user trusts.
TRUSTED_ONLY_KEYS = ("ssh_config",)
FOLDER_NAME_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


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


@dataclass(frozen=True)
class DevicesFile:
    path: Path
    trusted: bool  # named by the user, or the one in ~/.config; not one found in the working directory


def devices_file(explicit_file: str | None = None) -> DevicesFile | None:
    """The devices file in use: --devices-file or $EDGECLF_DEVICES_FILE, else ./edgeclf.yaml, else the home one."""
    explicit_file = explicit_file or os.environ.get("EDGECLF_DEVICES_FILE")
    if explicit_file:
        path = Path(explicit_file).expanduser()
        if not path.is_file():
            raise UsageError(f"devices file {path} does not exist", "check --devices-file or $EDGECLF_DEVICES_FILE")
        return DevicesFile(path, trusted=True)
    if CWD_DEVICES_FILE.is_file():
        return DevicesFile(CWD_DEVICES_FILE, trusted=False)
    home = Path(HOME_DEVICES_FILE).expanduser()
    return DevicesFile(home, trusted=True) if home.is_file() else None


def _read_devices_file(explicit_file: str | None) -> tuple[DevicesFile | None, dict]:
    found = devices_file(explicit_file)
    if found is None:
        return None, {}
    path = found.path
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"devices file {path} is not valid YAML ({first_line(exc)})", "fix its syntax") from exc
    if not isinstance(data, dict) or not isinstance(data.get("targets") or {}, dict):
        raise UsageError(f"devices file {path} has no `targets:` mapping", "see the Devices section of the README")
    if not isinstance(data.get("groups") or {}, dict):
        raise UsageError(f"devices file {path}: `groups:` is not a mapping", "write e.g. `groups: {pis: [pi4, pi5]}`")
    return found, data


def load_groups(explicit_file: str | None = None) -> dict[str, list[str]]:
    """Named groups of devices, e.g. `groups: {pis: [pi4, pi5]}`; members are any device names."""
    found, data = _read_devices_file(explicit_file)
    groups = {}
    for name, members in (data.get("groups") or {}).items():
        if isinstance(members, str):
            members = [members]
        if not NAME_PATTERN.match(str(name)) or not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise UsageError(f"devices file {found.path}: group '{name}' is malformed", "give it a simple name and a list of device names")
        if name in (data.get("targets") or {}):
            raise UsageError(f"devices file {found.path}: '{name}' is both a target and a group", "rename one of them")
        groups[str(name)] = list(members)
    return groups


def expand_devices(specs, explicit_file: str | None = None) -> list[str]:
    """Device names with groups replaced by their members (a member may be a group too), each
    device once, in order."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    # Only a plain name can be a group; local and URLs never read the devices file.
    groups = load_groups(explicit_file) if any(_is_plain_name(s) for s in specs) else {}
    expanded: list[str] = []

    def add(name: str, inside: list[str]) -> None:
        if name not in groups:
            if name not in expanded:
                expanded.append(name)
            return
        if name in inside:
            cycle = " -> ".join([*inside[inside.index(name):], name])
            raise UsageError(f"devices file {devices_file(explicit_file).path}: groups contain each other ({cycle})",
                             "remove one of them from the other")
        for member in groups[name]:
            add(member, [*inside, name])

    for spec in specs:
        add(spec, [])
    return expanded


def _is_plain_name(spec: str) -> bool:
    return spec not in ("", "local", "adb") and "://" not in spec


def load_named_targets(explicit_file: str | None = None) -> dict[str, Target]:
    found, data = _read_devices_file(explicit_file)
    if found is None:
        return {}
    path = found.path
    targets = {}
    for name, entry in (data.get("targets") or {}).items():
        if not isinstance(entry, dict) or not NAME_PATTERN.match(str(name)):
            raise UsageError(f"devices file {path}: target '{name}' is malformed", "give each target a simple name and an ssh: or adb: entry")
        risky = [key for key in TRUSTED_ONLY_KEYS if key in entry]
        if risky and not found.trusted:
            raise UsageError(f"{path} in the working directory sets {risky[0]} for target '{name}', which can run local commands",
                             f"pass --devices-file {path} to trust it")
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


def folder_name(device: str) -> str:
    """A file name for a device's results that no other device name shares: `ssh://pi@board` is
    `ssh~pi%40board`, `ssh://pi_board` is `ssh~pi_board`. Letters, digits, `.`, `_` and `-` stay,
    the first `://` becomes `~`, every other character (`~` and `%` too) becomes `%XX` per UTF-8 byte,
    so the mapping can be undone and two names never meet in one folder."""
    scheme, sep, rest = device.partition("://")
    name = f"{_escape(scheme)}~{_escape(rest)}" if sep else _escape(device)
    return "%2E" + name[1:] if name.startswith(".") else name  # never `.`, `..` or a hidden file


def _escape(text: str) -> str:
    return "".join(c if c in FOLDER_NAME_KEPT else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def parse_target(spec: str, explicit_file: str | None = None) -> Target:
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
    named = load_named_targets(explicit_file)
    if spec in named:
        return named[spec]
    known = ", ".join(named) if named else "none in a devices file"
    raise UsageError(f"unknown device '{spec}'", f"use local, ssh://[user@]host[:port], adb[://SERIAL], or a named target ({known})")
