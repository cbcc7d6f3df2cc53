#!/usr/bin/python3
"""test-soak.py: a short run of bench/soak.py (the issue's soak test).

16 connections mixing reads, writes, write-zeroes, trims, flushes and
block-status queries for 30 s while a snapshot is taken every half second
and the oldest deleted; every read, every block-status hole and every
snapshot is checked exactly (see bench/soak.py), and the server must then
exit cleanly on SIGTERM (in the ASan build LeakSanitizer makes any leak a
failed exit).  The 10-minute, 64-connection run is a benchmark.
"""
import os
import subprocess
import sys

src = os.environ.get("SRCDIR", os.path.dirname(os.path.realpath(__file__)))
soak = os.path.join(src, "..", "..", "bench", "soak.py")
r = subprocess.run([sys.executable, soak, "--duration", "30", "--conns", "16",
                    "--snap-every", "0.5", "--keep", "3"], timeout=500)
sys.exit(r.returncode)
