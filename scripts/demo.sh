#!/usr/bin/env bash
# demo.sh: snapvol's main job on the embedded default, from a fresh checkout:
# install what is missing, build, create a demo volume in the local pool
# ./data (under the checkout), and serve it over NBD until Ctrl-C.
#   SNAPVOL_POOL   pool directory (default: ./data in the checkout)
#   DEMO_VOLUME    volume name (default: demo), DEMO_SIZE (default: 1G)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

pool=${SNAPVOL_POOL:-$PWD/data}
vol=${DEMO_VOLUME:-demo}
snapvol=$PWD/build/cli/snapvol
export SNAPVOL_POOL=$pool
if ! "$snapvol" info "$vol" >/dev/null 2>&1; then
  "$snapvol" create "$vol" --size "${DEMO_SIZE:-1G}"
fi
sock=$pool/nbd.sock
cat <<TXT

snapvol is serving pool $pool (Ctrl-C stops it).  From another shell:

  nbdinfo --list 'nbd+unix:///?socket=$sock'
  qemu-img convert -n -O raw disk.raw 'nbd+unix:///$vol?socket=$sock'
  nbdcopy 'nbd+unix:///$vol?socket=$sock' copy.raw
  $snapvol --pool $pool list
  $snapvol --pool $pool status

TXT
exec "$snapvol" --pool "$pool" serve
