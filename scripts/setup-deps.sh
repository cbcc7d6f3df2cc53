#!/usr/bin/env bash
# setup-deps.sh: install every Debian package snapvol needs to build, test
# and benchmark, if any is missing.  Idempotent and quick when all are there.
# Needs root (apt-get) only when something is missing.
set -euo pipefail

PKGS=(
  # build
  build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
  libjansson-dev libroaring-dev libgnutls28-dev liburing-dev zlib1g-dev libcmocka-dev libnbd-dev
  clang-format clang-tidy cppcheck
  # real NBD clients and peers for tests and benchmarks; qemu-utils (qemu-img,
  # qemu-nbd) is also needed at run time by qcow2 backups and their restore
  libnbd-bin python3-libnbd nbdkit qemu-utils qemu-system-common fio
  # TLS keys and certificates for the TLS tests (psktool, certtool)
  gnutls-bin
  # filesystems on volumes in tests
  fuse3 e2fsprogs xfsprogs util-linux
  # Ceph RADOS backend (issue 7): librados to build, a single-node cluster in tests
  librados-dev ceph-mon ceph-osd ceph-common
  qemu-block-extra # qemu-nbd's rbd driver: bench/rados.sh QEMU=1
  # docs and plots
  man-db groff-base gnuplot-nox python3
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup-deps: installing: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
