"""An arm64 Debian root run through qemu-user: the emulated Raspberry Pi (and phone).

Built once per machine with ``mmdebstrap --variant=extract`` under
``/var/cache/edgeclf-tests/arm64-root`` (root-owned, outside /tmp, as sshd's
``ChrootDirectory`` demands), keyed by a version stamp and rebuilt when the
stamp changes. Concurrent builders serialise on a ``flock``; a build goes to a
scratch directory that is renamed into place only when complete.

numpy and tflite-runtime are PyPI aarch64 wheels fetched with
``pip download --platform`` and unpacked into the root's dist-packages.
Everything is byte-compiled at build time because the device user cannot
write ``__pycache__`` (and import under qemu is slow enough without it).

No ``/proc`` or ``/sys`` is mounted in the root (LiteRT/XNNPACK's cpuinfo
crashes under qemu when it sees the host's real ``/sys``). Instead a few
plain files give the root a Raspberry Pi 4 identity that cpuinfo can parse:
``/proc/cpuinfo``, ``/sys/devices/system/cpu/{possible,present,online}`` and
``/sys/firmware/devicetree/base/model``.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .common import StandInUnavailable, is_root, which_or_raise

CACHE_DIR = Path(os.environ.get("EDGECLF_TEST_CACHE", "/var/cache/edgeclf-tests"))
ROOT_NAME = "arm64-root"
SUITE = "bookworm"
MIRROR = os.environ.get("EDGECLF_ARM64_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "base-files", "base-passwd", "libc-bin", "dash", "bash", "coreutils", "findutils", "grep", "sed",
    "mawk", "tar", "gzip", "python3", "python3-minimal", "libstdc++6", "libgomp1",
)
PYTHON_TAG = "3.11"  # bookworm's python3
# (requirement, platform tag) fetched with `pip download --only-binary=:all:`.
# tflite-runtime 2.14 is built against the numpy 1.x ABI; 1.26.4 is the last 1.x.
WHEELS = (
    ("tflite-runtime==2.14.0", "manylinux_2_34_aarch64"),
    ("numpy==1.26.4", "manylinux2014_aarch64"),
)
LAYOUT_VERSION = 3  # bump when the post-processing below changes
STAMP_FILE = ".edgeclf-arm64-root.json"
DEVICE_PYTHON = "/usr/bin/python3"

PI_MODEL = "Raspberry Pi 4 Model B Rev 1.4"
_PI_CPUINFO_CORE = (
    "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n"
)
PI_CPUINFO = (
    "\n".join(_PI_CPUINFO_CORE.format(i=i) for i in range(4))
    + f"\nHardware\t: BCM2835\nRevision\t: d03114\nSerial\t\t: 10000000edgec1f0\nModel\t\t: {PI_MODEL}\n"
)


def stamp() -> dict:
    return {
        "layout": LAYOUT_VERSION,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "wheels": [list(w) for w in WHEELS],
        "python": PYTHON_TAG,
    }


@dataclass
class Arm64Root:
    """A ready arm64 root. ``run`` executes a command inside it (as root unless ``user``)."""

    path: Path
    binfmt_mode: str  # "binfmt" (kernel runs arm64 ELF via qemu, works in chroot) or "qemu-L"
    python: str = DEVICE_PYTHON
    arch: str = "aarch64"

    def argv(self, argv: list[str], userspec: str | None = None) -> list[str]:
        if self.binfmt_mode == "binfmt":
            spec = [f"--userspec={userspec}"] if userspec else []
            return ["chroot", *spec, str(self.path), *argv]
        # Without binfmt, qemu loads the guest's dynamic linker and libraries from -L, but the
        # program itself must be named by its host path.
        prog = argv[0]
        if prog.startswith("/") and (self.path / prog.lstrip("/")).exists():
            prog = str(self.path / prog.lstrip("/"))
        return [shutil.which("qemu-aarch64-static") or "qemu-aarch64-static", "-L", str(self.path), prog, *argv[1:]]

    def run(self, argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(argv), timeout=timeout, **kw)


# ---------------------------------------------------------------- binfmt_misc


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
QEMU_AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def _binfmt_entry() -> dict | None:
    entry = BINFMT_DIR / "qemu-aarch64"
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return None
    info = {"enabled": bool(lines) and lines[0].strip() == "enabled"}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        info[key.rstrip(":")] = value.strip()
    return info


def ensure_binfmt() -> str:
    """Make the kernel run aarch64 ELF files through qemu-aarch64-static, also inside a chroot.

    Returns "binfmt" when chroot works, or "qemu-L" when only ``qemu-aarch64-static -L ROOT``
    can be used (no binfmt_misc here). Raises StandInUnavailable without qemu at all.
    """
    qemu = which_or_raise("qemu-aarch64-static", "qemu-user-static")
    if not (BINFMT_DIR / "register").exists() and is_root():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], capture_output=True)
    if not (BINFMT_DIR / "register").exists():
        return "qemu-L"
    info = _binfmt_entry()
    if info is None and is_root() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
        info = _binfmt_entry()
    if info is None and is_root():
        # Register by hand; the F flag opens the interpreter now, so it works in any chroot.
        rule = f":qemu-aarch64:M::{QEMU_AARCH64_MAGIC}:{QEMU_AARCH64_MASK}:{qemu}:F"
        with contextlib.suppress(OSError):
            (BINFMT_DIR / "register").write_text(rule)
        info = _binfmt_entry()
    if info is None:
        return "qemu-L"
    if not info.get("enabled") and is_root():
        with contextlib.suppress(OSError):
            (BINFMT_DIR / "qemu-aarch64").write_text("1")
        info = _binfmt_entry() or {}
    if not info.get("enabled"):
        return "qemu-L"
    return "binfmt"


def _install_interpreter_copy(root: Path) -> None:
    """For a binfmt entry without the F flag the kernel looks the interpreter up inside the chroot."""
    info = _binfmt_entry() or {}
    if "F" in info.get("flags", ""):
        return
    interp = info.get("interpreter")
    if not interp:
        return
    target = root / interp.lstrip("/")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(interp), target)


# ---------------------------------------------------------------- building


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def _fetch_wheels(dest: Path, log: Callable[[str], None]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    found = []
    for requirement, platform in WHEELS:
        name, _, version = requirement.partition("==")
        prefix = f"{name.replace('-', '_')}-{version}-"
        existing = [p for p in dest.glob(f"{prefix}*.whl") if "aarch64" in p.name]
        if not existing:
            log(f"arm64 root: pip download {requirement} ({platform})")
            cmd = [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--platform", platform, "--python-version", PYTHON_TAG, "--implementation", "cp",
                "--abi", "cp" + PYTHON_TAG.replace(".", ""), "-d", str(dest), requirement,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise StandInUnavailable(f"pip download {requirement} failed: {res.stderr.strip()[-800:]}")
            existing = [p for p in dest.glob(f"{prefix}*.whl") if "aarch64" in p.name]
        if not existing:
            raise StandInUnavailable(f"pip download {requirement} produced no aarch64 wheel in {dest}")
        found.append(sorted(existing)[-1])
    return found


def _unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            target = site / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, mode or 0o644)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _post_process(root: Path) -> None:
    for d, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("home", 0o755), ("run", 0o755),
                    ("data", 0o771), ("data/local", 0o751), ("data/local/tmp", 0o771),
                    ("system/bin", 0o755), ("system/etc", 0o755), ("sdcard", 0o770),
                    ("proc", 0o555), ("sys", 0o555)):
        p = root / d
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, mode)
    # base-passwd's postinst never ran (extract variant): write the databases ourselves.
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nshell:x:2000:2000:Android shell:/data/local/tmp:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    _write(root / "etc/group", "root:x:0:\nshell:x:2000:\nnogroup:x:65534:\n")
    _write(root / "etc/hostname", "raspberrypi\n")
    _write(root / "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    # A Raspberry Pi 4 identity that cpuinfo (XNNPACK) can parse without a real /proc or /sys.
    _write(root / "proc/cpuinfo", PI_CPUINFO)
    for name in ("possible", "present", "online"):
        _write(root / "sys/devices/system/cpu" / name, "0-3\n")
    model = root / "sys/firmware/devicetree/base/model"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(PI_MODEL.encode() + b"\0")
    dt = root / "proc/device-tree"
    if not dt.is_symlink():
        dt.symlink_to("/sys/firmware/devicetree/base")
    # The user has no write access to site-packages: byte-compile everything now.
    dirs = [root / "usr/lib/python3.11", root / "usr/lib/python3/dist-packages",
            root / "usr/local/lib/python3.11/dist-packages"]
    if sys.version_info[:2] == (3, 11):
        for d in dirs:
            if d.is_dir():
                inside = "/" + str(d.relative_to(root))
                compileall.compile_dir(str(d), ddir=inside, quiet=1, workers=0)
    else:
        # Different host Python: let the device's python compile itself under qemu (slower).
        subprocess.run(["chroot", str(root), DEVICE_PYTHON, "-m", "compileall", "-q",
                        *["/" + str(d.relative_to(root)) for d in dirs if d.is_dir()]],
                       capture_output=True, timeout=1800)


def _build(target: Path, log: Callable[[str], None]) -> None:
    mmdebstrap = which_or_raise("mmdebstrap", "mmdebstrap")
    scratch = target.with_name(f"{target.name}.build-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.monotonic()
    log(f"arm64 root: mmdebstrap {SUITE} arm64 into {scratch}")
    cmd = [mmdebstrap, "--quiet", "--mode=root", "--arch=arm64", "--variant=extract",
           "--include=" + ",".join(PACKAGES), SUITE, str(scratch), MIRROR]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise StandInUnavailable(f"mmdebstrap failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-1500:]}")
    site = scratch / "usr/local/lib/python3.11/dist-packages"
    for wheel in _fetch_wheels(CACHE_DIR / "wheels", log):
        _unpack_wheel(wheel, site)
    _post_process(scratch)
    (scratch / STAMP_FILE).write_text(json.dumps(stamp(), indent=1))
    os.chmod(scratch, 0o755)
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(scratch, target)
    log(f"arm64 root: built in {time.monotonic() - t0:.1f}s")


def _check_owned_by_root(path: Path) -> None:
    """sshd's ChrootDirectory wants every component root-owned and not group/other-writable."""
    p = path
    while True:
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            if p == path or p.is_relative_to(CACHE_DIR):
                os.chown(p, 0, 0)
                os.chmod(p, st.st_mode & ~0o022)
            else:
                raise StandInUnavailable(f"{p} must be root-owned and not group/other-writable for sshd ChrootDirectory")
        if p.parent == p:
            return
        p = p.parent


def ensure_arm64_root(log: Callable[[str], None] = lambda s: None) -> Arm64Root:
    """Return the cached arm64 root, building it (~15-60 s, network: Debian + PyPI) when missing or stale."""
    if not is_root():
        raise StandInUnavailable("building/using the arm64 chroot needs root (mmdebstrap --mode=root, chroot)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE_DIR, 0o755)
    target = CACHE_DIR / ROOT_NAME
    with _locked(CACHE_DIR / f"{ROOT_NAME}.lock"):
        # Leftovers of builders that died (we hold the lock, so none is running).
        for stale in list(CACHE_DIR.glob(f"{ROOT_NAME}.build-*")) + list(CACHE_DIR.glob(f"{ROOT_NAME}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)
        if _read_stamp(target) != stamp():
            _build(target, log)
        _check_owned_by_root(target)
    mode = ensure_binfmt()
    if mode == "binfmt":
        _install_interpreter_copy(target)
    root = Arm64Root(path=target, binfmt_mode=mode)
    res = root.run([DEVICE_PYTHON, "-c", "import platform; print(platform.machine())"], timeout=120)
    if res.returncode != 0 or res.stdout.strip() != "aarch64":
        raise StandInUnavailable(
            f"arm64 root at {target} does not run ({mode}): rc={res.returncode} out={res.stdout!r} err={res.stderr[-500:]!r}"
        )
    return root


def ensure_user(name: str, comment: str = "edgeclf test device") -> tuple[int, int]:
    """Create a host user for sshd (locked password but usable with keys). Returns (uid, gid)."""
    import pwd

    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", f"/home/{name}",
           "--shell", "/bin/sh", "--comment", comment, name]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "already exists" not in res.stderr:
        raise StandInUnavailable(f"useradd {name} failed: {res.stderr.strip()}")
    # '*' (not '!'): no password login, but sshd does not treat the account as locked.
    subprocess.run(["usermod", "-p", "*", name], capture_output=True)
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def add_root_user(root: Path, name: str, uid: int, gid: int, home: str) -> None:
    """Add ``name`` to the root's passwd/group (idempotent) and create its home dir there."""
    # Test workers running in parallel may do this at once: replace the files whole, never truncate.
    for table, entry in (("passwd", f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh"), ("group", f"{name}:x:{gid}:")):
        path = root / "etc" / table
        lines = [l for l in path.read_text().splitlines() if not l.startswith(f"{name}:")]
        staged = path.with_name(f".{table}.{os.getpid()}")
        staged.write_text("\n".join([*lines, entry]) + "\n")
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    h = root / home.lstrip("/")
    h.mkdir(parents=True, exist_ok=True)
    os.chown(h, uid, gid)
    os.chmod(h, 0o755)
