#!/usr/bin/env bash
# test-fsfreeze-xfs.sh: snapshot create --fsfreeze of xfs under load gives a clean
# log; without --fsfreeze the log holds transactions (fsfreeze-consistency.sh).
FS=xfs
source "$(dirname "$0")/fsfreeze-consistency.sh"
