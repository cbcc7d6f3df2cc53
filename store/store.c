/*
 * store.c: choose a backend from a pool spec.
 *
 * A spec is a directory for the local-file backend, or "rados:POOL" for
 * the Ceph RADOS backend (store-rados.c).  A build without librados refuses
 * "rados:" clearly rather than taking it for a directory named "rados:POOL".
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "store.h"

int
sv_store_open(const char *spec, bool create, struct sv_store **out)
{
	if (spec == NULL || spec[0] == '\0')
		return sv_error(EINVAL, "empty pool name");
	if (strncmp(spec, "rados:", 6) == 0) {
#ifdef SV_HAVE_RADOS
		/* The backend says what went wrong (configuration, cluster, pool). */
		return sv_store_rados_ops.open(spec, create, out);
#else
		return sv_error(ENOTSUP,
				"pool '%s': this snapvol was built without librados (Ceph RADOS "
				"pools need librados-dev at build time)",
				spec);
#endif
	}
	const struct sv_store_ops *ops = &sv_store_file_ops;
	if (ops->open(spec, create, out) == -1) {
		if (errno == ENOENT && !create)
			return sv_error(ENOENT, "pool %s does not exist", spec);
		if (errno == ENOENT)
			return sv_error(
			    ENOENT,
			    "pool %s: cannot create it: its parent directory does not "
			    "exist (snapvol creates the pool directory, not its parents)",
			    spec);
		return sv_error_errno("pool %s", spec);
	}
	return 0;
}
