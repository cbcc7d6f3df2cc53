/*
 * store-crash.c: a store backend that simulates power loss, in the manner
 * of SQLite's crash-test VFS (src/test6.c).
 *
 * The store contract (store.h) says a data write is durable only after
 * obj_sync of its object, or at once with SV_STORE_FUA; metadata writes are
 * atomic and durable when they return.  This backend makes the first rule
 * bite.  It wraps the local-file backend ("the disk") and:
 *
 *   - passes metadata calls, namespace calls and object creation and
 *     removal straight through (the file backend makes them durable);
 *   - keeps every obj_pwrite, obj_punch and obj_zero in an in-memory list
 *     of pending writes of its file (per file, not per handle: closing a
 *     handle does not make its writes durable, and another handle on the
 *     same object sees them), in order;
 *   - serves reads and extents from the disk with the pending writes laid
 *     over it in order (what a page cache shows);
 *   - applies a file's pending writes to the disk at obj_sync; a FUA write
 *     is pending like the others but marked durable, so it is never lost
 *     and is never applied out of order with the writes before it;
 *   - at a power loss (crash_store_powerloss, or the ctl->crash_at-th
 *     counted call) decides each pending write independently: dropped,
 *     applied, or torn (each 512-byte sector of it applied or not, and
 *     sometimes garbage in one sector).  Garbage only ever overwrites bytes
 *     of the torn write itself ("powersafe overwrite": a torn write never
 *     damages neighbouring bytes of its sectors), and is recorded in the
 *     ctl so the test can tell it from corruption;
 *   - fails every call with EIO after the power loss, so that the engine's
 *     in-memory state can be discarded through its ordinary close path
 *     without anything more reaching the disk;
 *   - can also fail one chosen call with an error and go on (a fault, not
 *     a crash: a full disk, a bad sector), to test the error paths: the
 *     Nth counted call (ctl->fail_at), or the Nth call of one kind on
 *     objects of a chosen name (crash_store_arm), with EIO or ENOSPC,
 *     short (a write applies its first half, a read fills its first half,
 *     then the call fails), or sticky (every later call of the kind fails
 *     too, until the test disarms it: a dead disk).  A failed sync loses
 *     the file's unsynced writes (unless the fault says to keep them):
 *     after a writeback error Linux may drop the dirty pages, and a later
 *     fsync returns 0, which is what the engine must survive.
 *
 * A clean close (no power loss) applies what is pending, as the kernel
 * writes back a killed process's dirty pages.
 *
 * One mutex serialises everything: this is a test backend, and the order
 * of calls is what it models.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-crash.h"

#define SECTOR 512u

enum pend_kind { P_WRITE, P_PUNCH, P_ZERO };

struct pending {
	enum pend_kind kind;
	uint64_t off, len;
	unsigned zflags;     /* P_ZERO */
	bool durable;	     /* a FUA write: survives any crash */
	unsigned char *data; /* P_WRITE */
	struct pending *next;
};

/* One file of the pool, shared by every handle on it. */
struct cfile {
	char vol[80];
	char obj[32];
	struct sv_obj *inner; /* open while the entry lives */
	uint64_t size;
	unsigned refs; /* handles */
	bool unlinked; /* removed; freed with its last handle */
	struct pending *head, *tail;
	struct cfile *next; /* store's list (only while linked) */
};

/* An armed kind fault and how many matching calls it has seen. */
struct armed {
	struct crash_fault f;
	uint64_t seen;
};

struct cstore {
	struct sv_store_base base;
	struct sv_store *inner;
	const struct sv_store_ops *iops;
	struct crash_ctl *ctl;
	pthread_mutex_t lock; /* everything below and every call */
	struct cfile *files;
	struct armed armed[CRASH_MAX_FAULTS];
	size_t n_armed;
	pthread_cond_t stall; /* CRASH_STALL: a call waits, or was released */
	unsigned stalled;
	bool released;
	uint64_t counts[CRASH_OP_KINDS];
};

const char *const crash_op_names[CRASH_OP_KINDS] = {
    [CRASH_OP_READ] = "read",	  [CRASH_OP_WRITE] = "write",	  [CRASH_OP_SYNC] = "sync",
    [CRASH_OP_PUNCH] = "punch",	  [CRASH_OP_META] = "meta_write", [CRASH_OP_OPEN] = "open",
    [CRASH_OP_REMOVE] = "remove", [CRASH_OP_EXTENT] = "extent",
};

struct cobj {
	struct sv_obj_base base;
	struct cstore *cs;
	struct cfile *f;
};

static const struct sv_store_ops crash_ops;

/* ---- pending writes ---- */

static void
free_pending(struct cfile *f)
{
	struct pending *p = f->head;
	while (p) {
		struct pending *n = p->next;
		free(p->data);
		free(p);
		p = n;
	}
	f->head = f->tail = NULL;
}

static int
queue(struct cfile *f, enum pend_kind kind, const void *data, uint64_t off, uint64_t len,
      unsigned zflags, bool durable)
{
	struct pending *p = calloc(1, sizeof *p);
	if (!p || (data && !(p->data = malloc(len ? len : 1)))) {
		free(p);
		errno = ENOMEM;
		return -1;
	}
	p->kind = kind;
	p->off = off;
	p->len = len;
	p->zflags = zflags;
	p->durable = durable;
	if (data)
		memcpy(p->data, data, len);
	if (f->tail)
		f->tail->next = p;
	else
		f->head = p;
	f->tail = p;
	return 0;
}

/* A failed writeback: the file's pending writes are lost, but for FUA
 * writes (acknowledged as durable, so already on the disk). */
static void
drop_dirty(struct cfile *f)
{
	struct pending **pp = &f->head;
	f->tail = NULL;
	while (*pp) {
		struct pending *p = *pp;
		if (p->durable) {
			f->tail = p;
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		free(p->data);
		free(p);
	}
}

/* Apply the part [off, off+len) of pending write p to the disk. */
static int
apply_part(struct cstore *cs, struct cfile *f, const struct pending *p, uint64_t off, uint64_t len)
{
	switch (p->kind) {
	case P_WRITE:
		return cs->iops->obj_pwrite(f->inner, p->data + (off - p->off), len, off, 0);
	case P_PUNCH:
		return cs->iops->obj_punch(f->inner, off, len);
	case P_ZERO:
		return cs->iops->obj_zero(f->inner, off, len, p->zflags & ~SV_ZERO_FAST_ONLY);
	}
	errno = EINVAL;
	return -1;
}

/* Make a file's pending writes durable, in order. */
static int
sync_file(struct cstore *cs, struct cfile *f)
{
	while (f->head) {
		struct pending *p = f->head;
		if (apply_part(cs, f, p, p->off, p->len) == -1)
			return -1;
		f->head = p->next;
		if (!f->head)
			f->tail = NULL;
		free(p->data);
		free(p);
	}
	return cs->iops->obj_sync(f->inner);
}

static void
add_garbage(struct crash_ctl *ctl, const struct cfile *f, uint64_t sector)
{
	struct crash_garbage *g =
	    realloc(ctl->garbage, (ctl->n_garbage + 1) * sizeof *ctl->garbage);
	if (!g)
		abort(); /* a test harness out of memory: nothing sensible to do */
	ctl->garbage = g;
	struct crash_garbage *e = &g[ctl->n_garbage++];
	snprintf(e->vol, sizeof e->vol, "%s", f->vol);
	snprintf(e->obj, sizeof e->obj, "%s", f->obj);
	e->sector = sector;
}

/* A pending write that was in flight when the power went: each of its
 * sectors reached the disk or not, and one may hold garbage. */
static void
tear(struct cstore *cs, struct cfile *f, const struct pending *p, unsigned *rng)
{
	uint64_t end = p->off + p->len;
	uint64_t first = p->off / SECTOR, last = (end - 1) / SECTOR;
	uint64_t garbage = UINT64_MAX;
	if (p->kind == P_WRITE && rand_r(rng) % 4 == 0)
		garbage = first + (uint64_t)rand_r(rng) % (last - first + 1);
	for (uint64_t sct = first; sct <= last; sct++) {
		uint64_t a = sct * SECTOR > p->off ? sct * SECTOR : p->off;
		uint64_t z = (sct + 1) * SECTOR < end ? (sct + 1) * SECTOR : end;
		if (sct == garbage) {
			unsigned char junk[SECTOR];
			for (size_t i = 0; i < sizeof junk; i++)
				junk[i] = (unsigned char)rand_r(rng);
			(void)cs->iops->obj_pwrite(f->inner, junk, z - a, a, 0);
			add_garbage(cs->ctl, f, sct);
		} else if (rand_r(rng) % 2) {
			(void)apply_part(cs, f, p, a, z - a);
		}
	}
}

static void
powerloss_locked(struct cstore *cs)
{
	struct crash_ctl *ctl = cs->ctl;
	if (ctl->crashed)
		return;
	unsigned rng = ctl->seed;
	for (struct cfile *f = cs->files; f; f = f->next) {
		for (struct pending *p = f->head; p; p = p->next) {
			int fate = p->durable ? 1 : rand_r(&rng) % 3;
			if (fate == 0) {
				ctl->dropped++;
			} else if (fate == 1) {
				(void)apply_part(cs, f, p, p->off, p->len);
				ctl->applied++;
			} else {
				tear(cs, f, p, &rng);
				ctl->torn++;
			}
		}
		free_pending(f);
	}
	__atomic_store_n(&ctl->crashed, true, __ATOMIC_RELEASE); /* crash_ctl_crashed */
}

/* Every call but closing starts here, with the lock held: EIO once the
 * power is gone; a counted call may be the one that cuts it. */
static int
enter_locked(struct cstore *cs, bool counted)
{
	struct crash_ctl *ctl = cs->ctl;
	if (!ctl->crashed && counted) {
		ctl->calls++;
		if (ctl->crash_at && ctl->calls >= ctl->crash_at)
			powerloss_locked(cs);
		if (!ctl->crashed && ctl->fail_at && ctl->calls == ctl->fail_at) {
			ctl->fail_at = 0;
			/* atomic: crash_ctl_faults */
			__atomic_add_fetch(&ctl->faults, 1, __ATOMIC_RELEASE);
			errno = ctl->fail_errno ? ctl->fail_errno : EIO;
			return -1;
		}
	}
	if (ctl->crashed) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/* Count a call of kind op on vol/name and decide whether an armed fault
 * fails it: 0, or the errno to fail with (*flags: the fault's flags).
 * Lock held, after enter_locked. */
static int
kind_fault_locked(struct cstore *cs, enum crash_op op, const char *vol, const char *name,
		  unsigned *flags)
{
	cs->counts[op]++;
	int err = 0;
	for (size_t i = 0; i < cs->n_armed; i++) {
		struct armed *a = &cs->armed[i];
		if (a->f.op != op || strncmp(name, a->f.obj, strlen(a->f.obj)) ||
		    strncmp(vol, a->f.vol, strlen(a->f.vol)))
			continue;
		a->seen++;
		if (a->seen < a->f.nth || (a->seen > a->f.nth && !(a->f.flags & CRASH_STICKY)))
			continue;
		if (!err) {
			err = a->f.err ? a->f.err : EIO;
			*flags = a->f.flags;
		}
	}
	if (err) {
		struct crash_ctl *ctl = cs->ctl;
		struct crash_fired f = {.op = op, .err = err};
		snprintf(f.vol, sizeof f.vol, "%s", vol);
		snprintf(f.obj, sizeof f.obj, "%s", name);
		if (ctl->fired++ == 0)
			ctl->first = f;
		bool seen = false;
		for (size_t i = 0; i < ctl->n_fired_list && !seen; i++)
			seen = ctl->fired_list[i].op == op &&
			       !strcmp(ctl->fired_list[i].obj, f.obj) &&
			       !strcmp(ctl->fired_list[i].vol, f.vol);
		if (!seen && ctl->n_fired_list < sizeof ctl->fired_list / sizeof *ctl->fired_list)
			ctl->fired_list[ctl->n_fired_list++] = f;
		if (*flags & CRASH_STALL) { /* others' calls go on while it waits */
			cs->stalled++;
			pthread_cond_broadcast(&cs->stall);
			while (!cs->released)
				pthread_cond_wait(&cs->stall, &cs->lock);
			cs->stalled--;
		}
	}
	return err;
}

/* Unlock, keeping errno. */
static int
leave(struct cstore *cs, int r)
{
	int e = errno;
	pthread_mutex_unlock(&cs->lock);
	errno = e;
	return r;
}

#define ENTER(cs, counted)                                                                         \
	do {                                                                                       \
		pthread_mutex_lock(&(cs)->lock);                                                   \
		if (enter_locked((cs), (counted)) == -1)                                           \
			return leave((cs), -1);                                                    \
	} while (0)

/* A call of kind op that an armed fault may fail outright. */
#define KIND_FAULT(cs, op, vol, name)                                                              \
	do {                                                                                       \
		unsigned fl_;                                                                      \
		int e_ = kind_fault_locked((cs), (op), (vol), (name), &fl_);                       \
		if (e_) {                                                                          \
			errno = e_;                                                                \
			return leave((cs), -1);                                                    \
		}                                                                                  \
	} while (0)

/* ---- the pool ---- */

int
crash_store_open(const char *dir, bool create, struct crash_ctl *ctl, struct sv_store **out)
{
	struct cstore *cs = calloc(1, sizeof *cs);
	if (!cs) {
		errno = ENOMEM;
		return -1;
	}
	cs->iops = &sv_store_file_ops;
	if (cs->iops->open(dir, create, &cs->inner) == -1) {
		int e = errno;
		free(cs);
		errno = e;
		return -1;
	}
	/* A copy of the table that says writes are durable when acknowledged:
	 * the engine then keeps records only, without its pre-image log. */
	static struct sv_store_ops records_only_ops;
	records_only_ops = crash_ops;
	records_only_ops.durable_writes = true;
	cs->base.ops = ctl->records_only ? &records_only_ops : &crash_ops;
	cs->ctl = ctl;
	pthread_mutex_init(&cs->lock, NULL);
	pthread_cond_init(&cs->stall, NULL);
	*out = (struct sv_store *)cs;
	return 0;
}

void
crash_store_powerloss(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	powerloss_locked(cs);
	pthread_mutex_unlock(&cs->lock);
}

int
crash_store_arm(struct sv_store *st, const struct crash_fault *f)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	if (cs->n_armed == CRASH_MAX_FAULTS || f->op >= CRASH_OP_KINDS || f->nth == 0) {
		pthread_mutex_unlock(&cs->lock);
		errno = f->nth == 0 || f->op >= CRASH_OP_KINDS ? EINVAL : EBUSY;
		return -1;
	}
	cs->armed[cs->n_armed++] = (struct armed){.f = *f};
	cs->ctl->fired = 0;
	cs->ctl->n_fired_list = 0;
	pthread_mutex_unlock(&cs->lock);
	return 0;
}

void
crash_store_disarm(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	cs->n_armed = 0;
	pthread_mutex_unlock(&cs->lock);
}

void
crash_store_wait_stalled(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	while (!cs->stalled)
		pthread_cond_wait(&cs->stall, &cs->lock);
	pthread_mutex_unlock(&cs->lock);
}

void
crash_store_release(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	cs->released = true;
	pthread_cond_broadcast(&cs->stall);
	pthread_mutex_unlock(&cs->lock);
}

void
crash_store_counts(struct sv_store *st, uint64_t counts[CRASH_OP_KINDS])
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	memcpy(counts, cs->counts, sizeof cs->counts);
	pthread_mutex_unlock(&cs->lock);
}

uint64_t
crash_store_fired(struct sv_store *st, struct crash_fired *first)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	uint64_t n = cs->ctl->fired;
	if (first)
		*first = cs->ctl->first;
	pthread_mutex_unlock(&cs->lock);
	return n;
}

bool
crash_store_fired_on(struct sv_store *st, enum crash_op op, const char *prefix, char name[32])
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	bool found = false;
	for (size_t i = 0; i < cs->ctl->n_fired_list && !found; i++) {
		const struct crash_fired *f = &cs->ctl->fired_list[i];
		found = f->op == op && !strncmp(f->obj, prefix, strlen(prefix));
		if (found && name)
			snprintf(name, 32, "%s", f->obj);
	}
	pthread_mutex_unlock(&cs->lock);
	return found;
}

bool
crash_ctl_garbage(const struct crash_ctl *ctl, const char *vol, const char *obj, uint64_t off)
{
	for (size_t i = 0; i < ctl->n_garbage; i++)
		if (ctl->garbage[i].sector == off / SECTOR && !strcmp(ctl->garbage[i].vol, vol) &&
		    !strcmp(ctl->garbage[i].obj, obj))
			return true;
	return false;
}

static int
c_open(const char *location, bool create, struct sv_store **out)
{
	(void)location, (void)create, (void)out;
	errno = ENOTSUP; /* opened with crash_store_open, which takes the ctl */
	return -1;
}

static void
close_file(struct cstore *cs, struct cfile *f)
{
	free_pending(f);
	if (f->inner)
		cs->iops->obj_close(f->inner);
	free(f);
}

static void
c_close(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	pthread_mutex_lock(&cs->lock);
	struct cfile *f = cs->files;
	while (f) {
		struct cfile *next = f->next;
		if (!cs->ctl->crashed)
			(void)sync_file(cs, f); /* a clean exit: the kernel writes it back */
		if (f->refs) {
			/* the engine must close every object before its store */
			fprintf(stderr, "store-crash: %s/%s still has %u handle(s) at close\n",
				f->vol, f->obj, f->refs);
			abort();
		}
		close_file(cs, f);
		f = next;
	}
	cs->files = NULL;
	cs->iops->close(cs->inner);
	pthread_mutex_unlock(&cs->lock);
	pthread_mutex_destroy(&cs->lock);
	pthread_cond_destroy(&cs->stall);
	free(cs);
}

static int
c_lock(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, false);
	return leave(cs, cs->iops->lock(cs->inner));
}

static const char *
c_describe(struct sv_store *st)
{
	struct cstore *cs = (struct cstore *)st;
	return cs->iops->describe(cs->inner);
}

static int
c_vol_list(struct sv_store *st, char ***names, size_t *n)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, false);
	return leave(cs, cs->iops->vol_list(cs->inner, names, n));
}

static int
c_vol_create(struct sv_store *st, const char *vol)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, true);
	return leave(cs, cs->iops->vol_create(cs->inner, vol));
}

/* A removed file: pending writes to it no longer matter. */
static void
unlink_file_locked(struct cstore *cs, struct cfile *f)
{
	for (struct cfile **pp = &cs->files; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	free_pending(f);
	if (f->refs == 0)
		close_file(cs, f);
	else
		f->unlinked = true;
}

static int
c_vol_remove(struct sv_store *st, const char *vol)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, true);
	KIND_FAULT(cs, CRASH_OP_REMOVE, vol, "");
	int r = cs->iops->vol_remove(cs->inner, vol);
	if (r == 0) {
		struct cfile *f = cs->files;
		while (f) {
			struct cfile *next = f->next;
			if (!strcmp(f->vol, vol))
				unlink_file_locked(cs, f);
			f = next;
		}
	}
	return leave(cs, r);
}

static int
c_meta_read(struct sv_store *st, const char *vol, const char *key, char **buf, size_t *len)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, false);
	return leave(cs, cs->iops->meta_read(cs->inner, vol, key, buf, len));
}

static int
c_meta_write(struct sv_store *st, const char *vol, const char *key, const void *buf, size_t len)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, true);
	KIND_FAULT(cs, CRASH_OP_META, vol, key);
	return leave(cs, cs->iops->meta_write(cs->inner, vol, key, buf, len));
}

static int
c_meta_remove(struct sv_store *st, const char *vol, const char *key)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, true);
	KIND_FAULT(cs, CRASH_OP_REMOVE, vol, key);
	return leave(cs, cs->iops->meta_remove(cs->inner, vol, key));
}

/* ---- objects ---- */

static struct cfile *
find_file_locked(struct cstore *cs, const char *vol, const char *obj)
{
	for (struct cfile *f = cs->files; f; f = f->next)
		if (!strcmp(f->vol, vol) && !strcmp(f->obj, obj))
			return f;
	return NULL;
}

static int
c_obj_open(struct sv_store *st, const char *vol, const char *obj, uint64_t size, unsigned flags,
	   struct sv_obj **out)
{
	struct cstore *cs = (struct cstore *)st;
	if (strlen(vol) >= sizeof((struct cfile *)0)->vol ||
	    strlen(obj) >= sizeof((struct cfile *)0)->obj) {
		errno = ENAMETOOLONG;
		return -1;
	}
	ENTER(cs, (flags & SV_OBJ_CREATE) != 0);
	KIND_FAULT(cs, CRASH_OP_OPEN, vol, obj);
	/* The disk decides whether it exists, has the right size, etc. */
	struct sv_obj *io;
	if (cs->iops->obj_open(cs->inner, vol, obj, size, flags & ~SV_OBJ_RDONLY, &io) == -1)
		return leave(cs, -1);
	struct cobj *o = calloc(1, sizeof *o);
	struct cfile *f = find_file_locked(cs, vol, obj);
	if (!o || (!f && !(f = calloc(1, sizeof *f)))) {
		cs->iops->obj_close(io);
		free(o);
		errno = ENOMEM;
		return leave(cs, -1);
	}
	if (f->inner) {
		cs->iops->obj_close(io); /* already open: share it */
	} else {
		snprintf(f->vol, sizeof f->vol, "%s", vol);
		snprintf(f->obj, sizeof f->obj, "%s", obj);
		f->inner = io;
		f->size = cs->iops->obj_size(io);
		f->next = cs->files;
		cs->files = f;
	}
	f->refs++;
	o->base.ops = cs->base.ops;
	o->cs = cs;
	o->f = f;
	*out = (struct sv_obj *)o;
	return leave(cs, 0);
}

static void
c_obj_close(struct sv_obj *so)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	pthread_mutex_lock(&cs->lock);
	struct cfile *f = o->f;
	if (--f->refs == 0 && f->unlinked)
		close_file(cs, f);
	pthread_mutex_unlock(&cs->lock);
	free(o);
}

static int
c_obj_remove(struct sv_store *st, const char *vol, const char *obj)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, true);
	KIND_FAULT(cs, CRASH_OP_REMOVE, vol, obj);
	int r = cs->iops->obj_remove(cs->inner, vol, obj);
	if (r == 0) {
		struct cfile *f = find_file_locked(cs, vol, obj);
		if (f)
			unlink_file_locked(cs, f);
	}
	return leave(cs, r);
}

static uint64_t
c_obj_size(struct sv_obj *so)
{
	return ((struct cobj *)so)->f->size;
}

static bool
in_range(const struct cfile *f, uint64_t off, uint64_t len)
{
	return off <= f->size && len <= f->size - off;
}

static int
c_obj_pread(struct sv_obj *so, void *buf, size_t len, uint64_t off)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	struct cfile *f = o->f;
	ENTER(cs, false);
	unsigned fl = 0;
	int fault = kind_fault_locked(cs, CRASH_OP_READ, f->vol, f->obj, &fl);
	if (fault && !(fl & CRASH_SHORT)) {
		errno = fault;
		return leave(cs, -1);
	}
	if (cs->iops->obj_pread(f->inner, buf, len, off) == -1)
		return leave(cs, -1);
	/* what the cache holds, over what the disk holds */
	uint64_t end = off + len;
	for (const struct pending *p = f->head; p; p = p->next) {
		uint64_t a = p->off > off ? p->off : off;
		uint64_t z = p->off + p->len < end ? p->off + p->len : end;
		if (a >= z)
			continue;
		if (p->kind == P_WRITE)
			memcpy((char *)buf + (a - off), p->data + (a - p->off), z - a);
		else
			memset((char *)buf + (a - off), 0, z - a);
	}
	if (fault) { /* short: the second half never arrived */
		memset((char *)buf + len / 2, 0xee, len - len / 2);
		errno = fault;
		return leave(cs, -1);
	}
	return leave(cs, 0);
}

static int
c_obj_pwrite(struct sv_obj *so, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	ENTER(cs, true);
	if (!in_range(o->f, off, len)) {
		errno = EINVAL;
		return leave(cs, -1);
	}
	unsigned fl = 0;
	int fault = kind_fault_locked(cs, CRASH_OP_WRITE, o->f->vol, o->f->obj, &fl);
	if (fault) {
		/* short: the first half reached the file (not durably) */
		if ((fl & CRASH_SHORT) && len / 2 > 0 &&
		    queue(o->f, P_WRITE, buf, off, len / 2, 0, false) == -1)
			return leave(cs, -1);
		errno = fault;
		return leave(cs, -1);
	}
	if (len == 0)
		return leave(cs, 0);
	return leave(cs, queue(o->f, P_WRITE, buf, off, len, 0, (flags & SV_STORE_FUA) != 0));
}

static int
c_obj_sync(struct sv_obj *so)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	ENTER(cs, true);
	unsigned fl = 0;
	int fault = kind_fault_locked(cs, CRASH_OP_SYNC, o->f->vol, o->f->obj, &fl);
	if (fault) {
		if (!(fl & CRASH_KEEP_DIRTY))
			drop_dirty(o->f);
		errno = fault;
		return leave(cs, -1);
	}
	return leave(cs, sync_file(cs, o->f));
}

static int
c_obj_punch(struct sv_obj *so, uint64_t off, uint64_t len)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	ENTER(cs, true);
	if (!in_range(o->f, off, len)) {
		errno = EINVAL;
		return leave(cs, -1);
	}
	KIND_FAULT(cs, CRASH_OP_PUNCH, o->f->vol, o->f->obj);
	if (len == 0)
		return leave(cs, 0);
	return leave(cs, queue(o->f, P_PUNCH, NULL, off, len, 0, false));
}

static int
c_obj_zero(struct sv_obj *so, uint64_t off, uint64_t len, unsigned flags)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	ENTER(cs, true);
	if (!in_range(o->f, off, len)) {
		errno = EINVAL;
		return leave(cs, -1);
	}
	/* Only a punch is known to be fast on every filesystem. */
	if ((flags & SV_ZERO_FAST_ONLY) && !(flags & SV_ZERO_MAY_TRIM)) {
		errno = ENOTSUP;
		return leave(cs, -1);
	}
	KIND_FAULT(cs, CRASH_OP_PUNCH, o->f->vol, o->f->obj);
	if (len == 0)
		return leave(cs, 0);
	return leave(cs, queue(o->f, P_ZERO, NULL, off, len, flags, false));
}

/* The disk's extents with the pending writes laid over them: exact at
 * byte granularity (a hole is only ever reported where zeros would be
 * read). */
static int
c_obj_extent(struct sv_obj *so, uint64_t off, uint64_t len, struct sv_extent *ext)
{
	struct cobj *o = (struct cobj *)so;
	struct cstore *cs = o->cs;
	struct cfile *f = o->f;
	ENTER(cs, false);
	KIND_FAULT(cs, CRASH_OP_EXTENT, f->vol, f->obj);
	if (cs->iops->obj_extent(f->inner, off, len, ext) == -1)
		return leave(cs, -1);
	uint64_t end = off + ext->length;
	for (const struct pending *p = f->head; p; p = p->next) {
		uint64_t pend = p->off + p->len;
		if (p->off > off && p->off < end)
			end = p->off;
		if (pend > off && pend < end)
			end = pend;
	}
	bool hole = ext->hole;
	for (const struct pending *p = f->head; p; p = p->next) {
		if (p->off > off || p->off + p->len <= off)
			continue;
		if (p->kind == P_WRITE)
			hole = false;
		else if (p->kind == P_PUNCH)
			hole = true;
		else
			hole = (p->zflags & SV_ZERO_MAY_TRIM) != 0;
	}
	ext->offset = off;
	ext->length = end - off;
	ext->hole = hole;
	return leave(cs, 0);
}

static int
c_obj_cache(struct sv_obj *so, uint64_t off, uint64_t len)
{
	struct cobj *o = (struct cobj *)so;
	(void)off, (void)len;
	ENTER(o->cs, false);
	return leave(o->cs, 0);
}

/* Writeback only starts I/O: nothing becomes durable, so the pending
 * writes stay pending (a power loss still drops or tears them). */
static int
c_obj_writeback(struct sv_obj *so)
{
	struct cobj *o = (struct cobj *)so;
	ENTER(o->cs, false);
	return leave(o->cs, 0);
}

static int
c_obj_fd(struct sv_obj *so)
{
	(void)so;
	return -1; /* the disk's bytes are not the object's: no zero-copy reads */
}

static int
c_obj_allocated(struct sv_obj *so, uint64_t *bytes)
{
	struct cobj *o = (struct cobj *)so;
	ENTER(o->cs, false);
	return leave(o->cs, o->cs->iops->obj_allocated(o->f->inner, bytes));
}

static int
c_obj_locate(struct sv_store *st, const char *vol, const char *obj, char *buf, size_t len)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, false);
	return leave(cs, cs->iops->obj_locate(cs->inner, vol, obj, buf, len));
}

static int
c_obj_list(struct sv_store *st, const char *vol, char ***names, size_t *n)
{
	struct cstore *cs = (struct cstore *)st;
	ENTER(cs, false);
	return leave(cs, cs->iops->obj_list(cs->inner, vol, names, n));
}

static const struct sv_store_ops crash_ops = {
    .struct_size = sizeof(struct sv_store_ops),
    .name = "crash",
    .open = c_open,
    .close = c_close,
    .lock = c_lock,
    .describe = c_describe,
    .vol_list = c_vol_list,
    .vol_create = c_vol_create,
    .vol_remove = c_vol_remove,
    .meta_read = c_meta_read,
    .meta_write = c_meta_write,
    .meta_remove = c_meta_remove,
    .obj_open = c_obj_open,
    .obj_close = c_obj_close,
    .obj_remove = c_obj_remove,
    .obj_size = c_obj_size,
    .obj_pread = c_obj_pread,
    .obj_pwrite = c_obj_pwrite,
    .obj_sync = c_obj_sync,
    .obj_punch = c_obj_punch,
    .obj_zero = c_obj_zero,
    .obj_extent = c_obj_extent,
    .obj_cache = c_obj_cache,
    .obj_fd = c_obj_fd,
    .obj_allocated = c_obj_allocated,
    .obj_locate = c_obj_locate,
    .obj_list = c_obj_list,
    .obj_writeback = c_obj_writeback,
};
