#!/usr/bin/env bash
# test-rados-fsfreeze.sh: test-fsfreeze-ext4.sh on a Ceph RADOS pool (issue
# 7: freeze and consistency groups work as on a local pool): snapshot create
# --fsfreeze of ext4 under load, through nbdfuse + loop on a RADOS volume,
# gives a clean filesystem, together with a second volume in one consistency
# group; without --fsfreeze it needs recovery (fsfreeze-consistency.sh).
FS=ext4
RADOS=1
source "$(dirname "$0")/fsfreeze-consistency.sh"
