/*
 * names.h: what a volume or snapshot name may be.
 *
 * Names become file names in a local pool and object names in RADOS, and
 * appear in NBD export names as VOL or VOL@SNAP, so they are restricted to
 * a portable set: 1..64 bytes of [A-Za-z0-9._+:-], not starting with '.' or
 * '-' (so no ".", "..", hidden files or option look-alikes).  Everything else
 * ('/', '@', spaces, control characters, non-ASCII) is refused with a
 * message that says which character is wrong.
 */
#ifndef SV_NAMES_H
#define SV_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#define SV_NAME_MAX 64

/* 0 if ok, else -1 with sv_error set ("what" is "volume" or "snapshot"). */
int sv_check_name(const char *name, const char *what);

/* Split "vol@snap" into its parts (snap NULL when there is no '@').  Both
 * parts are checked.  vol and snap must have room for SV_NAME_MAX+1 bytes. */
int sv_split_export_name(const char *export, size_t len, char *vol, char *snap, bool *has_snap);

#endif
