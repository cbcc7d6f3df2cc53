/*
 * view.c: views, what an NBD export serves.
 *
 * A view of "VOL" reads and writes the live volume: reads go straight to
 * the origin object (after any write-behind of the same chunks has landed,
 * writebehind.c); writes, trims and zero-writes go through the
 * copy-on-write path (cow.c) first, which copies pre-images a live snapshot
 * still needs, and then to the origin.  A view of "VOL@SNAP" is read-only
 * and reads through cow.c's snapshot path.  nbd/ sees no difference.
 *
 * Ranges were checked by the protocol layer; they are asserted again here,
 * at the layer boundary (nbdkit's backend.c does the same), because a range
 * past the end would write outside the volume.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "util.h"

struct sv_view {
	struct sv_volume *vol;
	uint64_t err_seen;    /* the volume's write error count this view reported */
	struct sv_snap *snap; /* NULL for the live volume; a counted reference */
	bool readonly;
	char description[256];
};

int
sv_view_open(struct sv_pool *pool, const char *export_name, size_t len, struct sv_view **out)
{
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	bool has_snap;
	if (len > 2 * SV_NAME_MAX + 1)
		return sv_error(EINVAL,
				"export name is too long (volume names have at most %d bytes)",
				SV_NAME_MAX);
	if (sv_split_export_name(export_name, len, vol, snap, &has_snap) == -1)
		return -1;
	struct sv_view *v = calloc(1, sizeof *v);
	if (!v)
		return sv_error(ENOMEM, "out of memory");
	sv_lock_or_abort(&pool->lock);
	int r = sv_volume_get_locked(pool, vol, &v->vol);
	sv_unlock_or_abort(&pool->lock);
	if (r == -1 && has_snap && sv_last_errno() == EWOULDBLOCK) {
		/* Another node holds the volume: follow it, read-only (follow.c).
		 * A follower is this view's alone, so its store reads run
		 * without the pool's lock: other opens do not wait for them. */
		char msg[1024];
		snprintf(msg, sizeof msg, "%s", sv_last_error());
		r = sv_follow_open(pool, vol, snap, msg, &v->vol);
	}
	if (r == -1) {
		free(v);
		return -1;
	}
	struct sv_volume *volume = v->vol;
	char sz[32];
	sv_format_size(volume->size, sz, sizeof sz);
	sv_lock_or_abort(&volume->cow_lock);
	/* The lockfs rule: nothing new attaches while a snapshot of the
	 * volume is being set up. */
	while (volume->setting_up)
		pthread_cond_wait(&volume->cow_cond, &volume->cow_lock);
	if (has_snap) {
		struct sv_snap *s = sv_snap_find_locked(volume, snap);
		if (!s || s->pending) {
			sv_unlock_or_abort(&volume->cow_lock);
			sv_view_close(v);
			return sv_error(ENOENT, "volume %s has no snapshot %s", vol, snap);
		}
		if (s->invalid) {
			sv_unlock_or_abort(&volume->cow_lock);
			sv_view_close(v);
			return sv_error(EIO, "snapshot %s@%s is invalid (its pre-images were lost)",
					vol, snap);
		}
		s->refs++;
		v->snap = s;
		v->readonly = true;
		snprintf(v->description, sizeof v->description,
			 "snapvol snapshot %s@%s (%s, %s-consistent)", vol, snap, sz,
			 s->consistency);
	} else {
		snprintf(v->description, sizeof v->description, "snapvol volume %s (%s, live)", vol,
			 sz);
	}
	sv_unlock_or_abort(&volume->cow_lock);
	v->err_seen = sv_wb_error_sample(volume);
	*out = v;
	return 0;
}

void
sv_view_close(struct sv_view *v)
{
	if (!v)
		return;
	struct sv_pool *pool = v->vol->pool;
	if (v->snap) {
		sv_lock_or_abort(&v->vol->cow_lock);
		v->snap->refs--;
		sv_unlock_or_abort(&v->vol->cow_lock);
	}
	if (v->vol->follow) {
		sv_follow_close(v->vol); /* the view's own: no pool lock */
	} else {
		sv_lock_or_abort(&pool->lock);
		sv_volume_put_locked(v->vol);
		sv_unlock_or_abort(&pool->lock);
	}
	free(v);
}

uint64_t
sv_view_size(struct sv_view *v)
{
	return v->vol->size;
}

bool
sv_view_readonly(struct sv_view *v)
{
	return v->readonly;
}

uint32_t
sv_view_chunk_size(struct sv_view *v)
{
	return v->vol->chunk_size;
}

const char *
sv_view_description(struct sv_view *v)
{
	return v->description;
}

static inline void
assert_range(struct sv_view *v, uint32_t len, uint64_t off)
{
	assert(off <= v->vol->size && len <= v->vol->size - off);
	(void)v, (void)len, (void)off;
}

/* SV_NOWAIT: a held write comes back with EAGAIN (nbd/ parks it) rather
 * than tie up the thread for the length of a freeze. */
static inline int
gate_mode(unsigned flags)
{
	return (flags & SV_NOWAIT) ? SV_GATE_TRY : SV_GATE_WAIT;
}

static inline int
fail(int *err)
{
	*err = errno ? errno : EIO;
	return -1;
}

int
sv_view_pread(struct sv_view *v, void *buf, uint32_t len, uint64_t off, int *err)
{
	assert_range(v, len, off);
	struct sv_volume *vol = v->vol;
	if (vol->follow)
		return sv_follow_pread(vol, buf, len, off, err);
	if (v->snap)
		return sv_cow_snap_pread(vol, v->snap, buf, len, off, err);
	sv_cow_wait_landed(vol, off, len); /* read what was acknowledged */
	if (vol->ops->obj_pread(vol->origin, buf, len, off) == -1)
		return fail(err);
	return 0;
}

int
sv_view_pread_async(struct sv_view *v, void *buf, uint32_t len, uint64_t off,
		    void (*done)(void *arg, int err), void *arg)
{
	assert_range(v, len, off);
	struct sv_volume *vol = v->vol;
	/* Landing chunks: sv_view_pread waits for them (read-your-writes). */
	if (v->snap || !vol->ops->obj_pread_async || sv_cow_landing(vol, off, len))
		return 0;
	return vol->ops->obj_pread_async(vol->origin, buf, len, off, done, arg) == 0;
}

bool
sv_view_reads_async(struct sv_view *v)
{
	return !v->snap && v->vol->ops->obj_pread_async;
}

int
sv_view_read_fd(struct sv_view *v, uint32_t len, uint64_t off, int *fd, uint64_t *fd_off)
{
	assert_range(v, len, off);
	if (v->snap)
		return -1; /* resolved chunk by chunk: no single descriptor */
	if (sv_cow_landing(v->vol, off, len))
		return -1; /* not on the origin yet: sv_view_pread waits for it */
	int f = v->vol->ops->obj_fd(v->vol->origin);
	if (f < 0)
		return -1;
	*fd = f;
	*fd_off = off;
	return 0;
}

int
sv_view_pwrite(struct sv_view *v, const void *buf, uint32_t len, uint64_t off, unsigned flags,
	       int *err)
{
	assert_range(v, len, off);
	assert(!v->readonly);
	struct sv_volume *vol = v->vol;
	struct sv_write_ticket t;
	int done = (flags & SV_FUA) ? sv_cow_write_begin(vol, off, len, gate_mode(flags), &t, err)
				    : sv_wb_write(vol, buf, len, off, gate_mode(flags), &t, err);
	if (done > 0)
		sv_writeback_note(vol, len); /* taken behind: on the origin soon */
	if (done)
		return done > 0 ? 0 : -1;
	int r =
	    vol->ops->obj_pwrite(vol->origin, buf, len, off, (flags & SV_FUA) ? SV_STORE_FUA : 0);
	if (r == -1)
		fail(err);
	sv_cow_write_end(vol, &t);
	if (r == 0 && !(flags & SV_FUA))
		sv_writeback_note(vol, len);
	return r;
}

static int
sync_if_fua(struct sv_view *v, unsigned flags, int *err)
{
	if ((flags & SV_FUA) && v->vol->ops->obj_sync(v->vol->origin) == -1) {
		/* Other unflushed writes may be lost with it: the next FLUSH
		 * must say so even if its own sync then succeeds. */
		int r = fail(err);
		v->err_seen = sv_wb_note_error(v->vol, *err); /* told here */
		return r;
	}
	return 0;
}

int
sv_view_trim(struct sv_view *v, uint32_t len, uint64_t off, unsigned flags, int *err)
{
	assert_range(v, len, off);
	struct sv_volume *vol = v->vol;
	if (vol->follow) { /* another node's volume: nothing is written here */
		*err = EPERM;
		return -1;
	}
	/* On a snapshot: the reader is done with the range (snapshot.c). */
	if (v->snap)
		return sv_snap_release(vol, v->snap, off, len, err);
	struct sv_write_ticket t;
	if (sv_cow_write_begin(vol, off, len, gate_mode(flags), &t, err) == -1)
		return -1;
	int r = vol->ops->obj_punch(vol->origin, off, len);
	if (r == -1)
		fail(err);
	sv_cow_write_end(vol, &t);
	return r == -1 ? -1 : sync_if_fua(v, flags, err);
}

int
sv_view_zero(struct sv_view *v, uint32_t len, uint64_t off, unsigned flags, int *err)
{
	assert_range(v, len, off);
	assert(!v->readonly);
	struct sv_volume *vol = v->vol;
	unsigned zf = 0;
	if (!(flags & SV_NO_HOLE))
		zf |= SV_ZERO_MAY_TRIM;
	if (flags & SV_FAST_ZERO)
		zf |= SV_ZERO_FAST_ONLY;
	struct sv_write_ticket t;
	if (sv_cow_write_begin(vol, off, len, gate_mode(flags), &t, err) == -1)
		return -1;
	int r = vol->ops->obj_zero(vol->origin, off, len, zf);
	if (r == -1)
		fail(err);
	sv_cow_write_end(vol, &t);
	return r == -1 ? -1 : sync_if_fua(v, flags, err);
}

int
sv_view_flush(struct sv_view *v, int *err)
{
	if (v->snap)
		return 0; /* nothing is ever written through a snapshot's view */
	if (sv_wb_flush(v->vol, &v->err_seen, err) == -1)
		return -1;
	if (v->vol->ops->obj_sync(v->vol->origin) == -1) {
		/* Every view's writes may be lost: each one's next flush says
		 * so (this one's now). */
		int r = fail(err);
		v->err_seen = sv_wb_note_error(v->vol, *err);
		return r;
	}
	return 0;
}

int
sv_view_cache(struct sv_view *v, uint32_t len, uint64_t off, int *err)
{
	assert_range(v, len, off);
	if (v->snap)
		return 0; /* a hint only; the snapshot's chunks are scattered */
	if (v->vol->ops->obj_cache(v->vol->origin, off, len) == -1)
		return fail(err);
	return 0;
}

int
sv_view_extents(struct sv_view *v, uint32_t len, uint64_t off, struct sv_extent *ext, size_t max,
		size_t *n, int *err)
{
	assert_range(v, len, off);
	struct sv_volume *vol = v->vol;
	if (vol->follow)
		return sv_follow_extents(vol, len, off, ext, max, n, err);
	if (v->snap)
		return sv_cow_snap_extents(vol, v->snap, len, off, ext, max, n, err);
	sv_cow_wait_landed(vol, off, len); /* data not yet on the origin is data */
	uint64_t end = off + len;
	size_t k = 0;
	while (off < end && max > 0) {
		struct sv_extent e;
		if (vol->ops->obj_extent(vol->origin, off, end - off, &e) == -1)
			return fail(err);
		if (e.length == 0)
			break;
		if (k > 0 && ext[k - 1].hole == e.hole) {
			ext[k - 1].length += e.length;
		} else {
			if (k == max)
				break;
			ext[k++] = e;
		}
		off += e.length;
	}
	*n = k;
	return 0;
}

int
sv_pool_list_exports(struct sv_pool *pool,
		     int (*fn)(void *opaque, const char *name, const char *description),
		     void *opaque)
{
	struct sv_volume_info *infos;
	size_t n;
	if (sv_volume_list(pool, &infos, &n) == -1)
		return -1;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		char sz[32], desc[256];
		snprintf(desc, sizeof desc, "snapvol volume %s (%s, live)", infos[i].name,
			 sv_format_size(infos[i].size, sz, sizeof sz));
		r = fn(opaque, infos[i].name, desc);
		struct sv_snapshot_info *snaps;
		size_t ns;
		int lr = -1;
		if (r == 0 && infos[i].snapshots) {
			lr = sv_snapshot_list(pool, infos[i].name, &snaps, &ns);
			/* Held by another node: its snapshots are served here
			 * too (follow.c), so they are listed. */
			if (lr == -1 && sv_last_errno() == EWOULDBLOCK)
				lr = sv_follow_snapshot_list(pool, infos[i].name, &snaps, &ns);
		}
		if (lr == 0) {
			for (size_t k = 0; k < ns && r == 0; k++) {
				if (snaps[k].invalid)
					continue;
				char name[2 * SV_NAME_MAX + 2];
				snprintf(name, sizeof name, "%s@%s", infos[i].name, snaps[k].name);
				snprintf(desc, sizeof desc,
					 "snapvol snapshot %s (%s, %s-consistent, read-only)", name,
					 sz, snaps[k].consistency);
				r = fn(opaque, name, desc);
			}
			free(snaps);
		}
	}
	free(infos);
	return r;
}

struct sv_volume *
sv_view_volume(struct sv_view *v)
{
	return v->vol;
}

struct sv_snap *
sv_view_snap(struct sv_view *v)
{
	return v->snap;
}
