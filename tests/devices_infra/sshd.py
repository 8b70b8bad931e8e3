"""A real OpenSSH server on 127.0.0.1 for device tests, with throw-away keys.

``SSHServer`` runs ``sshd -D -e -f <config>`` as a child process on a free
port. It writes a client ``ssh_config`` with host-key checking ON (the real
host key is in its ``UserKnownHostsFile``), so ``ssh -F <config> <alias> CMD``
works exactly as the product will use it. Users listed in ``chroot`` are
locked into that directory with ``Match User`` / ``ChrootDirectory``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import LOOPBACK, StandInUnavailable, free_port, is_root, stop_process, tail, wait_for_port, which_or_raise

BAD_CONFIG_KINDS = ("wrong_key", "unknown_host_key", "changed_host_key", "closed_port")


@dataclass
class SSHTarget:
    """Everything a client needs to reach one user on the test sshd.

    ``ssh -F ssh_config alias CMD`` (or ``ssh_argv(CMD)``) runs CMD there with
    strict host-key checking; ``scp -F ssh_config FILE alias:PATH`` works too.
    """

    host: str
    port: int
    user: str
    alias: str
    ssh_config: Path
    identity_file: Path
    known_hosts: Path
    python: str = "python3"
    arch: str = ""
    emulated: bool = False
    workdir: str = "/tmp"  # a directory the user may write to on the target
    server: "SSHServer | None" = field(default=None, repr=False)

    def ssh_argv(self, *command: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), self.alias, *command]

    def run(self, command: str, input: bytes | str | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run a shell command line on the target through the system ssh client."""
        text = not isinstance(input, bytes)
        return subprocess.run(self.ssh_argv(command), input=input, capture_output=True, text=text,
                              timeout=timeout, check=check, stdin=None if input is not None else subprocess.DEVNULL)

    def push(self, local: Path | str, remote: str, timeout: float = 120) -> None:
        """Copy a file with `ssh ... 'cat > remote'` (no scp/sftp needed on the target)."""
        data = Path(local).read_bytes()
        res = subprocess.run(self.ssh_argv(f"cat > {shquote(remote)}"), input=data, capture_output=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"push {local} -> {remote} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")

    def pull(self, remote: str, timeout: float = 120) -> bytes:
        res = subprocess.run(self.ssh_argv(f"cat {shquote(remote)}"), capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"pull {remote} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
        return res.stdout

    def make_bad_config(self, kind: str) -> Path:
        """An ssh_config for the same alias that must fail: see ``BAD_CONFIG_KINDS``."""
        assert self.server is not None
        return self.server.make_bad_config(self.user, kind)


def shquote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


class SSHServer:
    """One sshd child on 127.0.0.1:<free port>.

    users:  the users allowed to log in (default: the current user).
    chroot: {user: root_dir} users jailed with ChrootDirectory (root only).
    """

    def __init__(self, users: list[str] | None = None, chroot: dict[str, Path] | None = None,
                 alias_prefix: str = "edgeclf-test"):
        self.users = users or [getpass.getuser()]
        self.chroot = {u: Path(p) for u, p in (chroot or {}).items()}
        self.alias_prefix = alias_prefix
        self.dir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.targets: dict[str, SSHTarget] = {}

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 20) -> "SSHServer":
        sshd = which_or_raise("sshd", "openssh-server")
        which_or_raise("ssh", "openssh-client")
        keygen = which_or_raise("ssh-keygen", "openssh-client")
        if self.chroot and not is_root():
            raise StandInUnavailable("sshd ChrootDirectory needs root")
        if is_root():
            # sshd's privilege separation directory; Debian creates it only at service start.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="edgeclf-sshd-"))
        # Users other than root read authorized_keys as themselves: keep it world-readable.
        os.chmod(self.dir, 0o755)
        d = self.dir
        for name in ("ssh_host_ed25519_key", "client_ed25519"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"edgeclf-test-{name}", "-f", str(d / name)],
                           check=True, capture_output=True)
        (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
        os.chmod(d / "authorized_keys", 0o644)
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            self._write_sshd_config()
            log = open(d / "sshd.log", "ab")
            # setpriv --pdeathsig: sshd dies with us even if pytest is killed before teardown.
            setpriv = shutil.which("setpriv")
            guard = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
            self.proc = subprocess.Popen([*guard, sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            log.close()
            try:
                wait_for_port(self.port, timeout, proc=self.proc, banner=b"SSH-2.0-")
                break
            except (RuntimeError, TimeoutError) as exc:
                last_error = f"{exc}; sshd log:\n{tail(d / 'sshd.log')}"
                stop_process(self.proc)
                self.proc = None
        else:
            self.stop()
            raise StandInUnavailable(f"sshd did not start: {last_error}")
        (d / "known_hosts").write_text(self._known_hosts_line(d / "ssh_host_ed25519_key.pub"))
        for user in self.users:
            self.targets[user] = self._make_target(user)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "SSHServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return tail(self.dir / "sshd.log", 20000) if self.dir else ""

    # -- files ---------------------------------------------------------------

    def _write_sshd_config(self) -> None:
        d = self.dir
        lines = [
            f"Port {self.port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            "PidFile none",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "UsePAM no",
            # Our key files live under /tmp, which StrictModes would reject.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {' '.join(self.users)}",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PermitUserEnvironment no",
            "MaxStartups 64:30:128",
            "MaxSessions 32",
            "LoginGraceTime 30",
            "ClientAliveInterval 15",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        for user, root in self.chroot.items():
            # Match blocks must come last: everything after them is conditional.
            lines += [f"Match User {user}", f"    ChrootDirectory {root}"]
        (d / "sshd_config").write_text("\n".join(lines) + "\n")

    def _known_hosts_line(self, pubkey: Path, host: str = LOOPBACK) -> str:
        key = " ".join(pubkey.read_text().split()[:2])
        return "".join(f"[{h}]:{self.port} {key}\n" for h in (host, "localhost"))

    def _client_config(self, user: str, identity: Path, known_hosts: Path, port: int | None = None) -> str:
        alias = self.alias_for(user)
        return (
            f"Host {alias}\n"
            f"    HostName {LOOPBACK}\n"
            f"    Port {port or self.port}\n"
            f"    User {user}\n"
            f"    IdentityFile {identity}\n"
            "    IdentitiesOnly yes\n"
            "    IdentityAgent none\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    UpdateHostKeys no\n"
            "    CheckHostIP no\n"
            "    BatchMode yes\n"
            "    PasswordAuthentication no\n"
            "    KbdInteractiveAuthentication no\n"
            "    ConnectTimeout 10\n"
            "    ServerAliveInterval 5\n"
            "    ServerAliveCountMax 3\n"
            "    ControlMaster no\n"
            "    ControlPath none\n"
            "    LogLevel ERROR\n"
        )

    def alias_for(self, user: str) -> str:
        return f"{self.alias_prefix}-{user}"

    def _make_target(self, user: str) -> SSHTarget:
        d = self.dir
        cfg = d / f"ssh_config.{user}"
        cfg.write_text(self._client_config(user, d / "client_ed25519", d / "known_hosts"))
        return SSHTarget(host=LOOPBACK, port=self.port, user=user, alias=self.alias_for(user), ssh_config=cfg,
                         identity_file=d / "client_ed25519", known_hosts=d / "known_hosts", server=self)

    def make_bad_config(self, user: str, kind: str) -> Path:
        """Write an ssh_config for ``user`` that fails in the given way (exit 255 from ssh).

        wrong_key:        a client key the server does not accept ("Permission denied (publickey)")
        unknown_host_key: empty known_hosts + StrictHostKeyChecking ("Host key verification failed")
        changed_host_key: known_hosts holds another key ("REMOTE HOST IDENTIFICATION HAS CHANGED")
        closed_port:      a port nothing listens on ("Connection refused")
        """
        if kind not in BAD_CONFIG_KINDS:
            raise ValueError(f"kind must be one of {BAD_CONFIG_KINDS}")
        d = self.dir
        sub = Path(tempfile.mkdtemp(prefix=f"bad-{kind}-", dir=d))
        identity, known_hosts, port = d / "client_ed25519", d / "known_hosts", None
        if kind == "wrong_key":
            identity = sub / "other_client_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(identity)], check=True,
                           capture_output=True)
        elif kind == "unknown_host_key":
            known_hosts = sub / "known_hosts"
            known_hosts.write_text("")
        elif kind == "changed_host_key":
            other = sub / "other_host_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                           capture_output=True)
            known_hosts = sub / "known_hosts"
            known_hosts.write_text(self._known_hosts_line(other.with_suffix(".pub")))
        elif kind == "closed_port":
            port = free_port()
        cfg = sub / "ssh_config"
        cfg.write_text(self._client_config(user, identity, known_hosts, port=port))
        return cfg


def wait_for_ssh(target: SSHTarget, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `true` until it succeeds (sshd may still be settling); returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        res = target.run("true", timeout=timeout)
        if res.returncode == 0 or time.monotonic() > deadline:
            return res
        time.sleep(0.2)
