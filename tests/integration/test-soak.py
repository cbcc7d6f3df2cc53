#!/usr/bin/python3
"""test-soak.py: a short run of bench/soak.py (the issue's soak test).

16 connections mixing reads, writes, write-zeroes, trims, flushes and
block-status queries for 30 s while a snapshot is taken every half second
and the oldest deleted; every read, every block-status hole and every
snapshot is checked exactly (see bench/soak.py), and the server must then
exit cleanly on SIGTERM.  This is the issue's "LeakSanitizer clean in a
shorter CI variant": CI runs it in the ASan+UBSan build too, where the
server's exit runs LeakSanitizer (ASAN_OPTIONS=detect_leaks=1 from
scripts/test.sh) and a leak makes the exit status non-zero, which
svtest's stop() turns into a failure (checked by preloading a library
that leaks one block into "snapvol serve": the test fails).  About 35 s.
The 10-minute, 64-connection run is a benchmark (bench/soak.py).
"""
import os
import subprocess
import sys

src = os.environ.get("SRCDIR", os.path.dirname(os.path.realpath(__file__)))
soak = os.path.join(src, "..", "..", "bench", "soak.py")
r = subprocess.run([sys.executable, soak, "--duration", "30", "--conns", "16",
                    "--snap-every", "0.5", "--keep", "3", "--verify-conns", "4"], timeout=500)
sys.exit(r.returncode)
