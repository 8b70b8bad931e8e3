#!/usr/bin/env bash
# Install the Debian packages that the device stand-in tests need
# (tests/devices_infra: sshd fixture, emulated arm64 "Raspberry Pi", adb stand-in)
# and the headless Chromium of the report test.
#
# Idempotent: installs only what is missing, runs `apt-get update` only when
# something has to be installed, never starts services (sshd is started by the
# pytest fixtures themselves, on a random 127.0.0.1 port).
#
# Usage: bash .ci/system-packages.sh        (as root; CI runs as root)
set -euo pipefail

PACKAGES=(
  openssh-server      # /usr/sbin/sshd for the SSH device fixture
  openssh-client      # ssh, ssh-keygen, ssh-keyscan (the product's SSH transport)
  adb                 # Debian's real adb client/server (Android device transport)
  mmdebstrap          # builds the arm64 Debian root of the emulated Pi
  qemu-user-static    # qemu-aarch64-static runs arm64 binaries on x86_64
  binfmt-support      # update-binfmts (registration of qemu-aarch64 in binfmt_misc)
  debian-archive-keyring
  ca-certificates
  procps              # ps/pkill used only for diagnostics
  chromium            # headless browser that opens `edgeclf report` pages (tests/test_report.py)
  fonts-dejavu-core   # so the browser's screenshot has glyphs
  libgl1 libegl1      # skia-python (the `app` extra: Android's resize kernel) links libGL/libEGL
)

if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages.sh: must run as root (skipping; device tests will skip)" >&2
  exit 0
fi

mount_binfmt() {
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  fi
}
mount_binfmt

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "system-packages.sh: installing ${missing[*]}"
  # Never let package scripts start daemons (sshd on port 22, adb ...).
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  ok=0
  for attempt in 1 2 3; do
    # A failing third-party source must not stop us: judge by the install below.
    apt-get update -qq || echo "system-packages.sh: apt-get update reported errors (attempt $attempt)" >&2
    if apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
      ok=1
      break
    fi
    sleep $((attempt * 5))
  done
  if [ "$created_policy" -eq 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ "$ok" -ne 1 ]; then
    echo "system-packages.sh: could not install ${missing[*]}" >&2
    exit 1
  fi
else
  echo "system-packages.sh: all device-test packages already installed"
fi

# sshd refuses to start without its privilege-separation directory.
mkdir -p /run/sshd
chmod 755 /run/sshd

# binfmt_misc lets the kernel run arm64 ELF files through qemu-aarch64-static,
# also inside a chroot (Debian registers it with the F flag). qemu-user-static's
# postinst registers only if binfmt_misc is mounted, hence the mount above and
# the explicit enable here. The fixtures repeat this check and skip if it fails.
mount_binfmt
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi

exit 0
