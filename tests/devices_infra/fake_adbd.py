"""The phone side of adb, for tests: a small adbd speaking the real wire protocol.

Debian's real ``adb`` client and server talk to this over TCP exactly as they
would to ``adb connect``-ed phone (adbd over Wi-Fi/TCP). Implemented from
AOSP's adb/protocol.txt, SERVICES.TXT, SYNC.TXT, file_sync_protocol.h and
shell_protocol.h:

* transport: 24-byte little-endian headers (command, arg0, arg1, length,
  checksum, magic = command ^ 0xffffffff) + payload; CNXN handshake with no
  AUTH (or AUTH TOKEN that never succeeds in "unauthorized" mode);
  OPEN / OKAY / WRTE / CLSE streams with one outstanding WRTE per direction.
* ``shell,v2,[raw|pty][,TERM=..]:CMD``: shell protocol v2 packets
  (1-byte id + 4-byte length: stdin 0, stdout 1, stderr 2, exit 3,
  close-stdin 4, window-size 5), so ``adb shell`` returns the exit code.
* ``shell:CMD`` (v1: merged output, no exit code) and ``exec:CMD``.
* ``sync:``: STAT/STA2/LST2, LIST/LIS2, SEND (DATA*, DONE+mtime -> OKAY|FAIL),
  RECV (DATA*, DONE | FAIL), QUIT - enough for ``adb push``/``adb pull``.

Shell commands run as uid 2000 ("shell") inside the arm64 root (qemu-user),
in a private mount namespace where ``/data/local/tmp``, ``/sdcard`` and
``/system/bin`` are bind mounts of per-device temp dirs. ``/system/bin``
holds a ``getprop`` that answers the device's properties.

Error-path switches: ``unauthorized`` (the adb host sees the device as
"unauthorized"), ``drop_on`` / ``drop_after`` (the TCP transport is cut while
a matching command runs), ``refuse_connections`` (the phone is gone) and
``hangup_kills=False`` (a command keeps running after the host hangs up; its
stdin still reaches EOF).
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import posixpath
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_STLS = 0x534C5453
A_VERSION = 0x01000001  # "skip checksum" protocol version
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
COMMAND_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY", A_CLSE: "CLSE",
                 A_WRTE: "WRTE", A_AUTH: "AUTH", A_STLS: "STLS"}

# shell protocol v2 packet ids (adb/shell_protocol.h)
ID_STDIN, ID_STDOUT, ID_STDERR, ID_EXIT, ID_CLOSE_STDIN, ID_WINDOW_SIZE = 0, 1, 2, 3, 4, 5

SYNC_DATA_MAX = 64 * 1024
SHELL_UID = 2000
FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir", "fixed_push_symlink_timestamp")

DEFAULT_PROPS = {
    "ro.product.model": "Pixel 8",
    "ro.product.manufacturer": "Google",
    "ro.product.brand": "google",
    "ro.product.name": "shiba",
    "ro.product.device": "shiba",
    "ro.hardware": "shiba",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.product.cpu.abilist64": "arm64-v8a",
    "ro.board.platform": "zuma",
    "ro.soc.manufacturer": "Google",
    "ro.soc.model": "Tensor G3",
    "ro.build.version.sdk": "34",
    "ro.build.version.release": "14",
    "ro.build.type": "user",
    "ro.build.id": "UQ1A.240205.004",
    "ro.build.fingerprint": "google/shiba/shiba:14/UQ1A.240205.004/11269751:user/release-keys",
    "ro.debuggable": "0",
    "sys.boot_completed": "1",
    "init.svc.adbd": "running",
}

PHONE_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 49.15\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n"
    "CPU part\t: 0xd41\nCPU revision\t: 0\n\n"
    for i in range(4)
)


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", command, arg0, arg1, len(data), _checksum(data), command ^ 0xFFFFFFFF) + data


class TransportClosed(Exception):
    pass


# ------------------------------------------------------------------ streams


class Stream:
    """One adb stream (our local id <-> the host's id) with flow control."""

    def __init__(self, transport: "Transport", local_id: int, remote_id: int, destination: str):
        self.transport = transport
        self.local_id = local_id
        self.remote_id = remote_id
        self.destination = destination
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._remote_closed = False
        self._closed = False
        # OPEN implies READY: the first WRTE may go out without waiting.
        self._can_write = threading.Event()
        self._can_write.set()

    # host -> us
    def on_write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            self._cond.notify_all()
        self.transport.send(A_OKAY, self.local_id, self.remote_id)

    def on_ready(self) -> None:
        self._can_write.set()

    def on_close(self) -> None:
        with self._cond:
            self._remote_closed = True
            self._cond.notify_all()
        self._can_write.set()

    @property
    def remote_closed(self) -> bool:
        return self._remote_closed

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._buf) < n:
                if self._remote_closed or self.transport.dead:
                    raise TransportClosed(f"stream {self.destination!r} closed by host")
                self._cond.wait(0.5)
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out

    def read_some(self, timeout: float = 0.5) -> bytes | None:
        """Whatever is buffered (waiting up to timeout); None once the host closed and all is read."""
        with self._cond:
            if not self._buf and not self._remote_closed and not self.transport.dead:
                self._cond.wait(timeout)
            if self._buf:
                out = bytes(self._buf)
                self._buf.clear()
                return out
            if self._remote_closed or self.transport.dead:
                return None
            return b""

    # us -> host
    def write(self, data: bytes) -> None:
        limit = self.transport.max_payload
        for off in range(0, len(data), limit):
            chunk = data[off:off + limit]
            while not self._can_write.wait(0.5):
                if self.transport.dead:
                    raise TransportClosed("transport dropped")
            if self._remote_closed or self._closed:
                raise TransportClosed(f"stream {self.destination!r} closed by host")
            self._can_write.clear()
            self.transport.send(A_WRTE, self.local_id, self.remote_id, chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._remote_closed:
            try:
                self.transport.send(A_CLSE, self.local_id, self.remote_id)
            except TransportClosed:
                pass
        self.transport.forget(self)


# ------------------------------------------------------------------ transport


class Transport(threading.Thread):
    """One TCP connection from the adb server."""

    def __init__(self, adbd: "FakeAdbd", sock: socket.socket):
        super().__init__(daemon=True, name=f"fake-adbd-transport-{sock.fileno()}")
        self.adbd = adbd
        self.sock = sock
        self.max_payload = 4096  # until the host's CNXN says otherwise
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self.online = False
        self.dead = False

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.dead:
            raise TransportClosed("transport dropped")
        msg = pack_message(command, arg0, arg1, data)
        try:
            with self._send_lock:
                self.sock.sendall(msg)
        except OSError as exc:
            self.drop()
            raise TransportClosed(str(exc)) from exc

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise TransportClosed("host closed the connection")
            buf += chunk
        return bytes(buf)

    def drop(self) -> None:
        """Cut the TCP connection abruptly (as a phone that vanished)."""
        if self.dead:
            return
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for s in list(self._streams.values()):
            s.on_close()

    def forget(self, stream: Stream) -> None:
        self._streams.pop(stream.local_id, None)

    def run(self) -> None:
        try:
            while not self.dead:
                header = self._recv_exact(24)
                command, arg0, arg1, length, _crc, magic = struct.unpack("<6I", header)
                if magic != command ^ 0xFFFFFFFF:
                    self.adbd.note(f"bad magic {header.hex()}")
                    break
                data = self._recv_exact(length) if length else b""
                self._dispatch(command, arg0, arg1, data)
        except (TransportClosed, OSError):
            pass
        finally:
            self.drop()
            self.adbd.transport_gone(self)

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        adbd = self.adbd
        if command == A_CNXN:
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            adbd.note(f"CNXN from host: version={arg0:#x} maxdata={arg1} {data[:80]!r}")
            if adbd.unauthorized:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            else:
                self.online = True
                self.send(A_CNXN, min(arg0, A_VERSION) or A_VERSION, MAX_PAYLOAD, adbd.banner().encode())
        elif command == A_AUTH:
            if arg0 == AUTH_SIGNATURE:
                # A real adbd verifies against its keys; ours never accepts: ask for the next key.
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            elif arg0 == AUTH_RSAPUBLICKEY:
                # The phone would now show "Allow USB debugging?" - nobody is there to tap it.
                adbd.note("AUTH RSAPUBLICKEY received; staying unauthorized")
        elif not self.online:
            return  # messages before CNXN must be ignored
        elif command == A_OPEN:
            destination = data.rstrip(b"\0").decode(errors="replace")
            local_id = next(self._ids)
            stream = Stream(self, local_id, arg0, destination)
            handler = adbd.service_for(destination)
            if handler is None:
                adbd.note(f"OPEN {destination!r} refused")
                self.send(A_CLSE, 0, arg0)
                return
            self._streams[local_id] = stream
            self.send(A_OKAY, local_id, arg0)
            adbd.note(f"OPEN {destination!r}")
            threading.Thread(target=adbd.run_service, args=(handler, stream), daemon=True,
                             name=f"fake-adbd-{destination[:20]}").start()
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            stream = self._streams.get(arg1)
            if stream is None:
                return  # closed while in flight: ignored, as protocol.txt says
            if command == A_OKAY:
                stream.on_ready()
            elif command == A_WRTE:
                stream.on_write(data)
            else:
                stream.on_close()
                self._streams.pop(arg1, None)
        else:
            adbd.note(f"unexpected command {COMMAND_NAMES.get(command, hex(command))}")


# ------------------------------------------------------------------ the daemon


@dataclass
class ShellRequest:
    command: str
    v2: bool
    pty: bool
    raw_exec: bool = False  # exec: service (stdout only, no stderr merge)


@dataclass
class FakeAdbd:
    """A fake phone listening on 127.0.0.1:port.

    root:      arm64 root to run commands in (an ``Arm64Root``); None runs them on the host
               with /bin/sh (protocol-only use).
    data_dir:  the host directory behind /data/local/tmp (created if missing).
    props:     getprop answers (DEFAULT_PROPS updated with these).
    """

    data_dir: Path
    root: object | None = None
    props: dict = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    features: tuple = FEATURES
    # error-path switches (may be flipped while running)
    unauthorized: bool = False
    refuse_connections: bool = False
    drop_on: str | None = None  # substring of a shell command that triggers a transport drop
    drop_after: float = 0.5     # seconds after that command starts
    stay_offline_after_drop: bool = True
    hangup_kills: bool = True  # False: a command outlives the host hanging up (adbd without a pty may)
    # observations for tests
    events: list = field(default_factory=list)
    commands: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.props = {**DEFAULT_PROPS, **self.props}
        self._listener: socket.socket | None = None
        self._transports: list[Transport] = []
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._work = self.data_dir.parent / (self.data_dir.name + ".device")

    # ---- lifecycle

    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "FakeAdbd":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_device_dirs()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self.port))
        self.port = self._listener.getsockname()[1]
        self._listener.listen(16)
        threading.Thread(target=self._accept_loop, daemon=True, name="fake-adbd-accept").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        for t in list(self._transports):
            t.drop()
        for p in list(self._procs):
            _kill_group(p)

    def __enter__(self) -> "FakeAdbd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def note(self, text: str) -> None:
        with self._lock:
            self.events.append(f"{time.monotonic():.3f} {text}")
            if len(self.events) > 5000:  # the adb server retries an offline phone every 250 ms
                del self.events[:1000]

    def banner(self) -> str:
        p = self.props
        return (f"device::ro.product.name={p['ro.product.name']};ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features={','.join(self.features)}")

    def drop_connections(self) -> None:
        """Cut every live transport now (a phone whose Wi-Fi just died)."""
        for t in list(self._transports):
            t.drop()
        for p in list(self._procs):
            _kill_group(p)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _addr = self._listener.accept()
            except OSError:
                return
            if self.refuse_connections:
                self.note("connection refused (device offline)")
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = Transport(self, sock)
            with self._lock:
                self._transports.append(t)
            self.note("transport connected")
            t.start()

    def transport_gone(self, t: Transport) -> None:
        with self._lock:
            if t in self._transports:
                self._transports.remove(t)
        self.note("transport closed")

    # ---- device filesystem

    def _prepare_device_dirs(self) -> None:
        self._work.mkdir(parents=True, exist_ok=True)
        self.sdcard_dir = self._work / "sdcard"
        self.sysbin_dir = self._work / "system_bin"
        self.sdcard_dir.mkdir(exist_ok=True)
        self.sysbin_dir.mkdir(exist_ok=True)
        getprop = self.sysbin_dir / "getprop"
        getprop.write_text(_getprop_script(self.props))
        os.chmod(getprop, 0o755)
        (self._work / "cpuinfo").write_text(PHONE_CPUINFO)
        if os.geteuid() == 0:
            for d in (self.data_dir, self.sdcard_dir):
                os.chown(d, SHELL_UID, SHELL_UID)
                os.chmod(d, 0o771)

    def _mounts(self) -> list[tuple[str, Path, bool]]:
        """(device prefix, host dir, writable)."""
        return [("/data/local/tmp", self.data_dir, True), ("/sdcard", self.sdcard_dir, True),
                ("/storage/emulated/0", self.sdcard_dir, True), ("/system/bin", self.sysbin_dir, False)]

    def host_path(self, device_path: str) -> tuple[Path | None, bool]:
        """Map a device path to (host path, writable). None: outside anything we expose."""
        p = posixpath.normpath("/" + device_path.lstrip("/")) if device_path else "/"
        for prefix, host_dir, writable in self._mounts():
            if p == prefix or p.startswith(prefix + "/"):
                rest = p[len(prefix):].lstrip("/")
                return (host_dir / rest if rest else host_dir), writable
        root = getattr(self.root, "path", None)
        if root is None:
            return None, False
        return Path(root) / p.lstrip("/"), False

    # ---- services

    def service_for(self, destination: str):
        if destination.startswith("shell"):
            name, _, command = destination.partition(":")
            args = name.split(",")[1:]
            v2 = "v2" in args
            pty = "pty" in args if ("pty" in args or "raw" in args) else not command
            return ("shell", ShellRequest(command=command, v2=v2, pty=pty))
        if destination.startswith("exec:"):
            return ("shell", ShellRequest(command=destination[5:], v2=False, pty=False, raw_exec=True))
        if destination.startswith("sync:"):
            return ("sync", None)
        return None

    def run_service(self, handler, stream: Stream) -> None:
        kind, arg = handler
        try:
            if kind == "shell":
                self._shell(stream, arg)
            else:
                self._sync(stream)
        except TransportClosed:
            pass
        except Exception as exc:  # keep the daemon alive; record what broke
            self.note(f"service {stream.destination!r} crashed: {exc!r}")
        finally:
            stream.close()

    def device_env(self) -> dict:
        return {
            "PATH": "/system/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/data/local/tmp" if self.root is None else "/",
            "TMPDIR": "/data/local/tmp",
            "ANDROID_DATA": "/data",
            "ANDROID_ROOT": "/system",
            "USER": "shell",
            "HOSTNAME": self.props.get("ro.product.device", "localhost"),
            "LANG": "C.UTF-8",
        }

    def command_argv(self, command: str | None) -> tuple[list[str], dict, str | None]:
        """argv, env, cwd that run a device shell command (None: interactive shell)."""
        sh_args = ["/bin/sh"] if not command else ["/bin/sh", "-c", command]
        if self.root is None:
            env = {**os.environ, **self.device_env(), "PATH": f"{self.sysbin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
            return sh_args, env, str(self.data_dir)
        root = str(getattr(self.root, "path"))
        binds = [(self.data_dir, "data/local/tmp"), (self.sdcard_dir, "sdcard"), (self.sysbin_dir, "system/bin"),
                 (self._work / "cpuinfo", "proc/cpuinfo")]
        tools = {name: shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name
                 for name in ("unshare", "mount", "chroot")}
        script = "set -e\n" + "".join(
            f"{tools['mount']} --bind {shlex.quote(str(src))} {shlex.quote(root + '/' + dst)}\n" for src, dst in binds
        ) + f'cd {shlex.quote(root)}\nexec {tools["chroot"]} --userspec={SHELL_UID}:{SHELL_UID} {shlex.quote(root)} "$@"\n'
        argv = [tools["unshare"], "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "fake-adbd",
                *sh_args]
        return argv, self.device_env(), None

    def _shell(self, stream: Stream, req: ShellRequest) -> None:
        self.commands.append(req.command)
        argv, env, cwd = self.command_argv(req.command)
        merge = req.pty or (not req.v2 and not req.raw_exec)
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge else subprocess.PIPE, start_new_session=True)
        self._procs.add(proc)
        if self.drop_on is not None and self.drop_on in req.command:
            def _drop() -> None:
                self.note(f"dropping transport during {req.command!r}")
                if self.stay_offline_after_drop:
                    self.refuse_connections = True
                stream.transport.drop()
                _kill_group(proc)
            threading.Timer(self.drop_after, _drop).start()

        def pump(fd, packet_id: int) -> None:
            try:
                while True:
                    data = os.read(fd.fileno(), 65536)
                    if not data:
                        return
                    if req.v2:
                        stream.write(struct.pack("<BI", packet_id, len(data)) + data)
                    elif not (req.raw_exec and packet_id == ID_STDERR):
                        stream.write(data)
            except (TransportClosed, OSError):
                _kill_group(proc)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, ID_STDOUT), daemon=True)]
        if proc.stderr is not None:
            pumps.append(threading.Thread(target=pump, args=(proc.stderr, ID_STDERR), daemon=True))
        for t in pumps:
            t.start()
        feeder = threading.Thread(target=self._feed_stdin, args=(stream, proc, req), daemon=True)
        feeder.start()
        try:
            for t in pumps:
                t.join()
            code = proc.wait()
        finally:
            self._procs.discard(proc)
        if code < 0:
            code = 128 - code
        if req.v2 and not stream.remote_closed and not stream.transport.dead:
            stream.write(struct.pack("<BIB", ID_EXIT, 1, code & 0xFF))

    def _feed_stdin(self, stream: Stream, proc: subprocess.Popen, req: ShellRequest) -> None:
        stdin = proc.stdin
        try:
            if req.v2:
                while True:
                    header = stream.read_exact(5)
                    packet_id, length = struct.unpack("<BI", header)
                    payload = stream.read_exact(length) if length else b""
                    if packet_id == ID_STDIN and stdin is not None:
                        try:
                            stdin.write(payload)
                            stdin.flush()
                        except (BrokenPipeError, ValueError):
                            pass
                    elif packet_id == ID_CLOSE_STDIN and stdin is not None:
                        stdin.close()
                        stdin = None
            else:
                while True:
                    data = stream.read_some()
                    if data is None:
                        break
                    if data and stdin is not None:
                        try:
                            stdin.write(data)
                            stdin.flush()
                        except (BrokenPipeError, ValueError):
                            pass
        except TransportClosed:
            pass
        finally:
            if stdin is not None:
                try:
                    stdin.close()
                except OSError:
                    pass
            # The host hung up on a running command (Ctrl-C, lost transport): end it.
            if (stream.remote_closed or stream.transport.dead) and self.hangup_kills:
                if proc.poll() is None:
                    _kill_group(proc)

    # ---- sync: (adb push / pull / ls)

    def _sync(self, stream: Stream) -> None:
        while True:
            req_id, length = struct.unpack("<4sI", stream.read_exact(8))
            if length > 1024:
                self._sync_fail(stream, "path too long")
                return
            path = stream.read_exact(length).decode(errors="surrogateescape") if length else ""
            self.note(f"sync {req_id.decode(errors='replace')} {path}")
            if req_id == b"STAT":
                st = self._lstat(path)
                stream.write(struct.pack("<4sIII", b"STAT", st.st_mode if st else 0, (st.st_size if st else 0) & 0xFFFFFFFF,
                                         int(st.st_mtime) if st else 0))
            elif req_id in (b"STA2", b"LST2"):
                stream.write(self._stat_v2(req_id, path))
            elif req_id in (b"LIST", b"LIS2"):
                self._list(stream, path, v2=req_id == b"LIS2")
            elif req_id == b"SEND":
                if not self._send(stream, path):
                    return
            elif req_id == b"RECV":
                if not self._recv(stream, path):
                    return
            elif req_id == b"QUIT":
                return
            else:
                self._sync_fail(stream, f"unknown command {req_id.hex()}")
                return

    def _sync_fail(self, stream: Stream, reason: str) -> None:
        data = reason.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _lstat(self, path: str, follow: bool = False):
        host, _ = self.host_path(path)
        if host is None:
            return None
        try:
            return os.stat(host) if follow else os.lstat(host)
        except OSError:
            return None

    def _stat_v2(self, req_id: bytes, path: str) -> bytes:
        host, _ = self.host_path(path)
        err, st = 0, None
        if host is None:
            err = errno.ENOENT
        else:
            try:
                st = os.stat(host) if req_id == b"STA2" else os.lstat(host)
            except OSError as exc:
                err = exc.errno or errno.EIO
        if st is None:
            return struct.pack("<4sIQQIIIIQqqq", req_id, err, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return struct.pack("<4sIQQIIIIQqqq", req_id, 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid,
                           st.st_gid, st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))

    def _list(self, stream: Stream, path: str, v2: bool) -> None:
        host, _ = self.host_path(path)
        names: list[str] = []
        if host is not None and host.is_dir():
            names = [".", ".."] + sorted(os.listdir(host))
        for name in names:
            try:
                st = os.lstat(host / name)
            except OSError:
                continue
            raw = name.encode(errors="surrogateescape")
            if v2:
                stream.write(struct.pack("<4sIQQIIIIQqqqI", b"DNT2", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink,
                                         st.st_uid, st.st_gid, st.st_size, int(st.st_atime), int(st.st_mtime),
                                         int(st.st_ctime), len(raw)) + raw)
            else:
                stream.write(struct.pack("<4sIIII", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                         len(raw)) + raw)
        if v2:
            stream.write(struct.pack("<4sIQQIIIIQqqqI", b"DONE", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        else:
            stream.write(struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0))

    def _send(self, stream: Stream, spec: str) -> bool:
        path, comma, mode_text = spec.rpartition(",")
        if not comma:
            self._sync_fail(stream, "missing , in ID_SEND_V1")
            return False
        try:
            mode = int(mode_text, 0)
        except ValueError:
            self._sync_fail(stream, "bad mode")
            return False
        host, writable = self.host_path(path)
        fail = None
        fh = None
        if host is None or not writable:
            fail = "couldn't create file: Read-only file system"
        else:
            try:
                host.parent.mkdir(parents=True, exist_ok=True)  # adbd's secure_mkdirs
                if host.is_dir():
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                if host.exists() or host.is_symlink():
                    host.unlink()
                fh = open(host, "wb")
            except OSError as exc:
                fail = f"couldn't create file: {exc.strerror}"
        timestamp = 0
        while True:  # read DATA* DONE even after a failure, as adbd does
            chunk_id, size = struct.unpack("<4sI", stream.read_exact(8))
            if chunk_id == b"DATA":
                if size > SYNC_DATA_MAX:
                    fail = fail or "oversize data message"
                    break
                data = stream.read_exact(size)
                if fh is not None and fail is None:
                    fh.write(data)
            elif chunk_id == b"DONE":
                timestamp = size
                break
            else:
                fail = fail or "invalid data message"
                break
        if fh is not None:
            fh.close()
        if fail is not None:
            if fh is not None:
                host.unlink(missing_ok=True)
            self._sync_fail(stream, fail)
            return False
        # adbd copies the user permission bits to group and other.
        mode &= 0o777
        mode |= (mode >> 3) & 0o070
        mode |= (mode >> 3) & 0o007
        os.chmod(host, mode)
        if os.geteuid() == 0:
            os.chown(host, SHELL_UID, SHELL_UID)
            for parent in host.parents:
                if parent == self.data_dir or parent == self.sdcard_dir or parent.stat().st_uid == SHELL_UID:
                    break
                os.chown(parent, SHELL_UID, SHELL_UID)
        if timestamp:
            os.utime(host, (timestamp, timestamp))
        stream.write(b"OKAY" + struct.pack("<I", 0))
        return True

    def _recv(self, stream: Stream, path: str) -> bool:
        host, _ = self.host_path(path)
        try:
            if host is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            fh = open(host, "rb")
        except OSError as exc:
            self._sync_fail(stream, f"open failed: {exc.strerror}")
            return False
        with fh:
            while True:
                data = fh.read(SYNC_DATA_MAX)
                if not data:
                    break
                stream.write(b"DATA" + struct.pack("<I", len(data)) + data)
        stream.write(b"DONE" + struct.pack("<I", 0))
        return True


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except OSError:
            pass


def _getprop_script(props: dict) -> str:
    lines = ["#!/bin/sh", "# getprop stand-in written by tests/devices_infra/fake_adbd.py",
             'if [ $# -eq 0 ]; then', "cat <<'EOF_PROPS'"]
    lines += [f"[{k}]: [{v}]" for k, v in sorted(props.items())]
    lines += ["EOF_PROPS", "exit 0", "fi", 'case "$1" in']
    for k, v in sorted(props.items()):
        lines.append(f"  {shlex.quote(k)}) printf '%s\\n' {shlex.quote(v)} ;;")
    lines += ['  *) printf \'%s\\n\' "${2:-}" ;;', "esac", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fake adbd on 127.0.0.1 (tests only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--arm64-root", help="run commands inside this arm64 root (needs root + binfmt)")
    ap.add_argument("--unauthorized", action="store_true")
    args = ap.parse_args(argv)
    root = None
    if args.arm64_root:
        from types import SimpleNamespace
        root = SimpleNamespace(path=Path(args.arm64_root))
    adbd = FakeAdbd(data_dir=Path(args.data_dir), root=root, port=args.port, unauthorized=args.unauthorized).start()
    print(f"fake adbd listening on {adbd.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        adbd.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
