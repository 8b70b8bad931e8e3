"""Any Linux board over the system OpenSSH client (keys, agents, ~/.ssh/config and jump hosts work).

Host-key checking stays on (BatchMode=yes never prompts). Every remote command string is
built from an argv list with shlex.quote.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from edgeclf.devices.base import CommandResult, lifeline, temp_dir_from_output, watched
from edgeclf.errors import DeviceError

SSH_FAILED = 255
REMOTE_TEMP_PARENT = "/tmp"
# Checked here rather than left to OpenSSH: a name, an alias from ~/.ssh/config, IPv4 or IPv6.
HOST_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def open_transport(target, options, connect_timeout: float) -> "SSHTransport":
    return SSHTransport(
        target.host, target.user, target.port, ssh_config=options.ssh_config or target.ssh_config,
        python=options.remote_python or target.python or "python3", connect_timeout=connect_timeout,
        insecure_host_key=options.insecure_host_key,
    )


class SSHTransport:
    kind = "ssh"
    runner = "python"

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 ssh_config: str | None = None, python: str = "python3", connect_timeout: float = 10,
                 insecure_host_key: bool = False):
        if not isinstance(host, str) or not HOST_PATTERN.fullmatch(host):
            raise DeviceError(f"'{host}' is not a valid SSH host", "use ssh://[user@]host[:port] with a plain host name or address")
        if user is not None and (not isinstance(user, str) or not USER_PATTERN.fullmatch(user)):
            raise DeviceError(f"'{user}' is not a valid SSH user name", "use letters, digits, '_', '.' and '-'")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise DeviceError(f"'{port}' is not a valid SSH port", "use a number from 1 to 65535")
        self.host, self.user, self.port = host, user, port
        self.ssh_config = ssh_config
        self.python = python
        self.connect_timeout = connect_timeout
        self.insecure_host_key = insecure_host_key
        self.name = f"{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"

    def _base(self) -> list[str]:
        argv = ["ssh"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(max(1, self.connect_timeout))}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2"]
        if self.insecure_host_key:  # only with the user's explicit --insecure-host-key
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return argv + ["--", self.host]

    def _ssh(self, remote_argv: list[str], timeout: float, stdin=None, binary=False) -> subprocess.CompletedProcess:
        command = shlex.join(remote_argv)
        try:
            return subprocess.run(self._base() + [command], capture_output=True, timeout=timeout, stdin=stdin or subprocess.DEVNULL)
        except FileNotFoundError:
            raise DeviceError("the ssh client is not installed", "install OpenSSH (Debian: apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name} did not answer within {timeout:g} s", "check the device is on and reachable, or raise --timeout") from None

    def _check(self, proc: subprocess.CompletedProcess, doing: str) -> None:
        if proc.returncode == SSH_FAILED:
            raise self.connection_error(proc.stderr.decode(errors="replace"))
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(f"{doing} on {self.name} failed: {detail[-1] if detail else f'exit {proc.returncode}'}", "check free space and permissions on the device")

    def connection_error(self, stderr: str) -> DeviceError:
        text = stderr.strip()
        last = text.splitlines()[-1] if text else "ssh failed"
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            return DeviceError(f"the host key of {self.name} is unknown or has changed", f"check it, then add it with `ssh {self.name}` once (edgeclf never skips host-key checks unless you pass --insecure-host-key)")
        if "Permission denied" in text or "Too many authentication failures" in text:
            return DeviceError(f"authentication to {self.name} failed ({last})", "load your key into ssh-agent or set IdentityFile in ~/.ssh/config")
        if any(s in text for s in ("Connection refused", "timed out", "No route to host", "Could not resolve", "Name or service not known", "Network is unreachable")):
            return DeviceError(f"{self.name} is unreachable ({last})", "check the host name, port and network")
        return DeviceError(f"ssh to {self.name} failed ({last})", "try `ssh` to it by hand to see why")

    def make_temp_dir(self) -> str:
        proc = self._ssh(["mktemp", "-d", f"{REMOTE_TEMP_PARENT}/edgeclf.XXXXXXXX"], timeout=self.connect_timeout + 20)
        self._check(proc, "creating a temp dir")
        return temp_dir_from_output(proc.stdout.decode(errors="replace"), REMOTE_TEMP_PARENT, self.name)

    def push(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            proc = self._ssh(["sh", "-c", 'cat > "$1"', "sh", remote], timeout=self.connect_timeout + 600, stdin=f)
        self._check(proc, f"copying {Path(local).name}")

    def pull(self, remote: str, local: Path) -> None:
        proc = self._ssh(["cat", remote], timeout=self.connect_timeout + 600)
        self._check(proc, f"fetching {remote}")
        Path(local).write_bytes(proc.stdout)

    def run(self, argv: list[str], timeout: float) -> CommandResult:
        with lifeline() as stdin:
            proc = self._ssh(watched(argv), timeout=timeout, stdin=stdin)
        if proc.returncode == SSH_FAILED and not proc.stdout:
            raise self.connection_error(proc.stderr.decode(errors="replace"))
        return CommandResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def remove(self, remote: str) -> None:
        proc = self._ssh(["rm", "-rf", "--", remote], timeout=self.connect_timeout + 30)
        self._check(proc, f"removing {remote}")
