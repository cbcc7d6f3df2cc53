#!/usr/bin/env bash
# test-fsfreeze-ext4.sh: snapshot create --fsfreeze of ext4 under load gives a clean
# filesystem; without --fsfreeze it needs recovery (fsfreeze-consistency.sh).
FS=ext4
source "$(dirname "$0")/fsfreeze-consistency.sh"
