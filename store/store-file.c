/*
 * store-file.c: the local backend.  A pool is a directory:
 *
 *   POOL/pool.lock               flock()ed by the one process that owns the pool
 *   POOL/volumes/NAME/origin.raw the volume's live data: a plain raw image,
 *                                usable by losetup, qemu-img or mount as is
 *   POOL/volumes/NAME/KEY        metadata blobs (volume.meta, ...)
 *   POOL/volumes/NAME/OBJ.raw    other data objects (pre-images, later)
 *   POOL/trash/NAME              removed objects whose space is not yet
 *                                given back (obj_trash, trash_step)
 *   POOL/trash/NAME/             a deleted volume's directory, the same
 *                                (vol_trash)
 *
 * Objects are sparse files: holes are never-written or trimmed ranges and
 * read back as zeros, which is exactly what a raw image means by them, and
 * SEEK_DATA/SEEK_HOLE answer block status.  Metadata blobs are replaced by
 * write, fdatasync, rename, fsync of the directory, so a crash leaves either
 * the old or the new blob, never a torn one.
 *
 * Every path below the pool is built from names the engine has validated
 * (common/names.c), and opened relative to the pool's directory fd, so no
 * name can reach outside the pool.
 *
 * The trash: unlinking a large sparse file frees all its extents when the
 * last descriptor closes, one synchronous discard each on a filesystem
 * mounted with "discard" (30-40 s for 16384 scattered chunks here), in
 * whichever process closes it last, even one that is exiting.  So a
 * removed pre-image is renamed into POOL/trash/ instead (its name leaves
 * the volume at once, durably), and trash_step punches its data away a
 * bounded step at a time (FALLOC_FL_PUNCH_HOLE over runs found with
 * SEEK_DATA/SEEK_HOLE), then unlinks the empty file, which is quick.  The
 * trash outlives the process: a crash or a stop leaves it for the next one.
 * A deleted volume goes the same way as a whole: its directory is renamed
 * into the trash (one rename: a crash leaves the volume or its remains in
 * the trash, never half a volume under its name), and trash_step steps
 * through its files one by one, then removes the empty directory.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

struct file_store {
	struct sv_store_base base;
	char *dir;
	int dirfd;  /* the pool directory */
	int volsfd; /* POOL/volumes */
	int lockfd; /* POOL/pool.lock, -1 until locked */
	/* The trash: POOL/trash, opened (and made) on first use. */
	pthread_mutex_t trash_lock; /* trashfd, trash_seq */
	int trashfd;
	unsigned trash_seq; /* unique names within this process */
	/* trash_step's file, kept between steps. */
	pthread_mutex_t step_lock;
	int step_fd; /* -1: none yet */
	char step_name[NAME_MAX + 1];
	uint64_t step_off, step_size; /* punched below step_off */
};

/* One trash step: at most this many runs and bytes of data punched. */
#define TRASH_STEP_RUNS	 64u
#define TRASH_STEP_BYTES (1u << 20)

struct file_obj {
	struct sv_obj_base base;
	int fd;
	uint64_t size;
};

static int
fsync_dirfd(int fd)
{
	return fsync(fd);
}

static int
file_open(const char *location, bool create, struct sv_store **out)
{
	if (create && mkdir(location, 0700) == -1 && errno != EEXIST)
		return -1;
	int dirfd = open(location, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd == -1)
		return -1;
	if (mkdirat(dirfd, "volumes", 0700) == -1 && errno != EEXIST) {
		int e = errno;
		close(dirfd);
		errno = e;
		return -1;
	}
	int volsfd = openat(dirfd, "volumes", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (volsfd == -1) {
		int e = errno;
		close(dirfd);
		errno = e;
		return -1;
	}
	struct file_store *fs = calloc(1, sizeof *fs);
	if (!fs || !(fs->dir = strdup(location))) {
		free(fs);
		close(volsfd);
		close(dirfd);
		errno = ENOMEM;
		return -1;
	}
	fs->base.ops = &sv_store_file_ops;
	fs->dirfd = dirfd;
	fs->volsfd = volsfd;
	fs->lockfd = -1;
	pthread_mutex_init(&fs->trash_lock, NULL);
	fs->trashfd = -1;
	pthread_mutex_init(&fs->step_lock, NULL);
	fs->step_fd = -1;
	*out = (struct sv_store *)fs;
	return 0;
}

static void
file_close(struct sv_store *st)
{
	struct file_store *fs = (struct file_store *)st;
	if (fs->lockfd >= 0)
		close(fs->lockfd); /* releases the flock */
	if (fs->step_fd >= 0)
		close(fs->step_fd); /* quick: the file still has its name */
	if (fs->trashfd >= 0)
		close(fs->trashfd);
	pthread_mutex_destroy(&fs->step_lock);
	pthread_mutex_destroy(&fs->trash_lock);
	close(fs->volsfd);
	close(fs->dirfd);
	free(fs->dir);
	free(fs);
}

static int
file_lock(struct sv_store *st)
{
	struct file_store *fs = (struct file_store *)st;
	int fd = openat(fs->dirfd, "pool.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd == -1)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		int e = errno;
		close(fd);
		errno = e == EAGAIN ? EWOULDBLOCK : e;
		return -1;
	}
	/* The owner's pid, for people reading the lock file. */
	char pid[32];
	int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) == 0 && sv_full_pwrite(fd, pid, (size_t)n, 0) == 0) {
		/* best effort: the flock is what counts */
	}
	fs->lockfd = fd;
	return 0;
}

static const char *
file_describe(struct sv_store *st)
{
	return ((struct file_store *)st)->dir;
}

/* Names in directory sub of dirfd (not starting with '.'); with suffix,
 * only those ending in it, without it.  A new open file description each
 * time: a dup would share its offset with concurrent listings. */
static int
list_dir(int dirfd, const char *sub, const char *suffix, char ***names, size_t *n)
{
	int fd = openat(dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -1;
	}
	size_t sl = suffix ? strlen(suffix) : 0;
	char **v = NULL;
	size_t cnt = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (e->d_name[0] == '.' ||
		    (suffix && (l <= sl || strcmp(e->d_name + l - sl, suffix) != 0)))
			continue;
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			char **nv = realloc(v, cap * sizeof *v);
			if (!nv)
				goto nomem;
			v = nv;
		}
		if (!(v[cnt] = strndup(e->d_name, l - sl)))
			goto nomem;
		cnt++;
	}
	closedir(d);
	*names = v;
	*n = cnt;
	return 0;
nomem:
	for (size_t i = 0; i < cnt; i++)
		free(v[i]);
	free(v);
	closedir(d);
	errno = ENOMEM;
	return -1;
}

static int
file_vol_list(struct sv_store *st, char ***names, size_t *n)
{
	return list_dir(((struct file_store *)st)->volsfd, ".", NULL, names, n);
}

static int
file_vol_create(struct sv_store *st, const char *vol)
{
	struct file_store *fs = (struct file_store *)st;
	if (mkdirat(fs->volsfd, vol, 0700) == -1)
		return -1;
	return fsync_dirfd(fs->volsfd);
}

static int
open_voldir(struct file_store *fs, const char *vol)
{
	return openat(fs->volsfd, vol, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
}

static int
file_vol_remove(struct sv_store *st, const char *vol)
{
	struct file_store *fs = (struct file_store *)st;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	DIR *d = fdopendir(vfd);
	if (!d) {
		close(vfd);
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) == -1 && errno != ENOENT)
			rc = -1;
	}
	int e2 = errno;
	closedir(d);
	if (rc == -1) {
		errno = e2;
		return -1;
	}
	if (unlinkat(fs->volsfd, vol, AT_REMOVEDIR) == -1)
		return -1;
	return fsync_dirfd(fs->volsfd);
}

static int
file_meta_read(struct sv_store *st, const char *vol, const char *key, char **buf, size_t *len)
{
	struct file_store *fs = (struct file_store *)st;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	int fd = openat(vfd, key, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int e = errno;
	close(vfd);
	if (fd == -1) {
		errno = e;
		return -1;
	}
	struct stat sb;
	if (fstat(fd, &sb) == -1)
		goto fail;
	if (sb.st_size > 64 * 1024 * 1024) {
		errno = EFBIG;
		goto fail;
	}
	char *b = malloc((size_t)sb.st_size + 1);
	if (!b) {
		errno = ENOMEM;
		goto fail;
	}
	if (sv_full_pread(fd, b, (size_t)sb.st_size, 0) == -1) {
		e = errno;
		free(b);
		errno = e;
		goto fail;
	}
	b[sb.st_size] = '\0';
	close(fd);
	*buf = b;
	*len = (size_t)sb.st_size;
	return 0;
fail:
	e = errno;
	close(fd);
	errno = e;
	return -1;
}

static int
file_meta_write(struct sv_store *st, const char *vol, const char *key, const void *buf, size_t len)
{
	struct file_store *fs = (struct file_store *)st;
	char tmp[NAME_MAX + 1];
	if (snprintf(tmp, sizeof tmp, ".%s.tmp", key) >= (int)sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	int fd = openat(vfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1)
		goto fail_dir;
	if (sv_full_pwrite(fd, buf, len, 0) == -1 || fdatasync(fd) == -1) {
		int e = errno;
		close(fd);
		unlinkat(vfd, tmp, 0);
		errno = e;
		goto fail_dir;
	}
	close(fd);
	if (renameat(vfd, tmp, vfd, key) == -1 || fsync_dirfd(vfd) == -1)
		goto fail_dir;
	close(vfd);
	return 0;
fail_dir:;
	int e = errno;
	close(vfd);
	errno = e;
	return -1;
}

static int
file_meta_remove(struct sv_store *st, const char *vol, const char *key)
{
	struct file_store *fs = (struct file_store *)st;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	int rc = unlinkat(vfd, key, 0);
	if (rc == 0)
		rc = fsync_dirfd(vfd);
	int e = errno;
	close(vfd);
	errno = e;
	return rc;
}

static int
obj_filename(const char *obj, char *buf, size_t len)
{
	if ((size_t)snprintf(buf, len, "%s.raw", obj) >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

static int
file_obj_open(struct sv_store *st, const char *vol, const char *obj, uint64_t size, unsigned flags,
	      struct sv_obj **out)
{
	struct file_store *fs = (struct file_store *)st;
	char fname[NAME_MAX + 1];
	if (obj_filename(obj, fname, sizeof fname) == -1)
		return -1;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	int oflags = O_CLOEXEC | O_NOFOLLOW | ((flags & SV_OBJ_RDONLY) ? O_RDONLY : O_RDWR);
	if (flags & SV_OBJ_CREATE)
		oflags |= O_CREAT;
	if (flags & SV_OBJ_EXCL)
		oflags |= O_EXCL;
	int fd = openat(vfd, fname, oflags, 0600);
	if (fd == -1)
		goto fail_dir;
	struct stat sb;
	if (fstat(fd, &sb) == -1)
		goto fail_fd;
	if (!S_ISREG(sb.st_mode)) {
		errno = EINVAL;
		goto fail_fd;
	}
	if ((uint64_t)sb.st_size != size) {
		if (sb.st_size == 0 && (flags & SV_OBJ_CREATE)) {
			/* Newly made: give it its size (all holes), durably. */
			if (ftruncate(fd, (off_t)size) == -1 || fsync(fd) == -1 || fsync(vfd) == -1)
				goto fail_fd;
		} else {
			errno = EUCLEAN; /* an object of the wrong size: damaged pool */
			goto fail_fd;
		}
	}
	struct file_obj *fo = calloc(1, sizeof *fo);
	if (!fo) {
		errno = ENOMEM;
		goto fail_fd;
	}
	fo->base.ops = &sv_store_file_ops;
	fo->fd = fd;
	fo->size = size;
	close(vfd);
	*out = (struct sv_obj *)fo;
	return 0;
fail_fd:;
	int e = errno;
	close(fd);
	errno = e;
fail_dir:
	e = errno;
	close(vfd);
	errno = e;
	return -1;
}

static void
file_obj_close(struct sv_obj *o)
{
	struct file_obj *fo = (struct file_obj *)o;
	close(fo->fd);
	free(fo);
}

static int
file_obj_remove(struct sv_store *st, const char *vol, const char *obj)
{
	struct file_store *fs = (struct file_store *)st;
	char fname[NAME_MAX + 1];
	if (obj_filename(obj, fname, sizeof fname) == -1)
		return -1;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	int rc = unlinkat(vfd, fname, 0);
	if (rc == 0)
		rc = fsync_dirfd(vfd);
	int e = errno;
	close(vfd);
	errno = e;
	return rc;
}

/* POOL/trash, made durably if missing; -1 with errno.  Under trash_lock. */
static int
trash_dir_locked(struct file_store *fs, bool create)
{
	if (fs->trashfd >= 0)
		return fs->trashfd;
	if (create) {
		if (mkdirat(fs->dirfd, "trash", 0700) == 0) {
			if (fsync_dirfd(fs->dirfd) == -1)
				return -1;
		} else if (errno != EEXIST) {
			return -1;
		}
	}
	fs->trashfd = openat(fs->dirfd, "trash", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	return fs->trashfd;
}

static int
trash_dir(struct file_store *fs, bool create)
{
	pthread_mutex_lock(&fs->trash_lock);
	int fd = trash_dir_locked(fs, create);
	pthread_mutex_unlock(&fs->trash_lock);
	return fd;
}

/* A unique name in the trash: the time, the pid, a count; the rest only
 * tells a reader where it came from.  -1 with errno. */
static int
trash_name(struct file_store *fs, const char *vol, const char *fname, char *tname, size_t len,
	   int *tfd)
{
	pthread_mutex_lock(&fs->trash_lock);
	*tfd = trash_dir_locked(fs, true);
	unsigned seq = fs->trash_seq++;
	pthread_mutex_unlock(&fs->trash_lock);
	if (*tfd == -1)
		return -1;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(tname, len, "%lld.%09ld-%ld-%u-%.80s%s%.80s", (long long)ts.tv_sec, ts.tv_nsec,
		 (long)getpid(), seq, vol, fname ? "-" : "", fname ? fname : "");
	return 0;
}

static int
file_obj_trash(struct sv_store *st, const char *vol, const char *obj)
{
	struct file_store *fs = (struct file_store *)st;
	char fname[NAME_MAX + 1], tname[NAME_MAX + 1];
	if (obj_filename(obj, fname, sizeof fname) == -1)
		return -1;
	int tfd;
	if (trash_name(fs, vol, fname, tname, sizeof tname, &tfd) == -1)
		return -1;
	int vfd = open_voldir(fs, vol);
	if (vfd == -1)
		return -1;
	/* Both directories synced: the new name first, so the file has a
	 * durable name all along. */
	int rc = renameat(vfd, fname, tfd, tname);
	if (rc == 0 && (fsync_dirfd(tfd) == -1 || fsync_dirfd(vfd) == -1))
		rc = -1;
	int e = errno;
	close(vfd);
	errno = e;
	return rc;
}

static int
file_vol_trash(struct sv_store *st, const char *vol)
{
	struct file_store *fs = (struct file_store *)st;
	char tname[NAME_MAX + 1];
	int tfd;
	if (trash_name(fs, vol, NULL, tname, sizeof tname, &tfd) == -1)
		return -1;
	/* One rename moves the volume whole.  Both directories synced: the
	 * new name first, so the directory has a durable name all along. */
	if (renameat(fs->volsfd, vol, tfd, tname) == -1 || fsync_dirfd(tfd) == -1 ||
	    fsync_dirfd(fs->volsfd) == -1)
		return -1;
	return 0;
}

/* Make file name of directory dfd the one trash_step works on, known as
 * "dname/name" (a trashed volume's file) or "name": 0, or -1 if its name
 * does not fit or it cannot be opened. */
static int
step_open(struct file_store *fs, int dfd, const char *dname, const char *name, uint64_t size)
{
	int n = dname ? snprintf(fs->step_name, sizeof fs->step_name, "%s/%s", dname, name)
		      : snprintf(fs->step_name, sizeof fs->step_name, "%s", name);
	if (n < 0 || (size_t)n >= sizeof fs->step_name)
		return -1;
	int fd = openat(dfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		return -1;
	fs->step_fd = fd;
	fs->step_off = 0;
	fs->step_size = size;
	return 0;
}

/* The next file to step in trashed volume directory dname (as
 * "dname/FILE" in step_name), as trash_scan does at the top; 1 if it holds
 * anything to do (files, or nothing at all: then the directory itself is
 * left to remove, which a picking scan does), 0 if not, -1 with errno.
 * Entries that are not regular files are not ours: left alone, and so is
 * the directory then. */
static int
trash_scan_dir(struct file_store *fs, int tfd, const char *dname, bool pick, uint64_t *bytes,
	       int *stuck)
{
	int dfd = openat(tfd, dname, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd == -1)
		return errno == ENOENT ? 0 : -1;
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -1;
	}
	int found = 0;
	bool foreign = false;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct stat sb;
		if (fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == -1)
			continue; /* gone */
		if (!S_ISREG(sb.st_mode)) {
			foreign = true;
			continue;
		}
		found = 1;
		if (bytes)
			*bytes += (uint64_t)sb.st_blocks * 512;
		if (pick && fs->step_fd == -1) {
			if (step_open(fs, dfd, dname, e->d_name, (uint64_t)sb.st_size) == -1) {
				/* cannot step it: whole (slow) */
				if (unlinkat(dfd, e->d_name, 0) == -1 && errno != ENOENT)
					*stuck = errno;
				continue;
			}
		}
		if (!bytes && (!pick || fs->step_fd >= 0))
			break;
	}
	closedir(d);
	if (found || foreign)
		return found;
	if (!pick)
		return 1; /* empty: the next step removes it */
	if (unlinkat(tfd, dname, AT_REMOVEDIR) == -1 && errno != ENOENT)
		return -1;
	return 0;
}

/* Open the next file of the trash for stepping; 0 if there is none.
 * bytes (if not NULL) gets the space the trash's files hold.  A file that
 * can be neither opened nor unlinked (EPERM: immutable, EROFS...) fails a
 * picking scan that found nothing else to step: a trash that only ever
 * reported more to do would be stepped in a loop. */
static int
trash_scan(struct file_store *fs, int tfd, bool pick, uint64_t *bytes)
{
	int stuck = 0;
	int dfd = openat(tfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd == -1)
		return -1;
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -1;
	}
	int found = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		struct stat sb;
		if (fstatat(tfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == -1)
			continue;	   /* gone */
		if (S_ISDIR(sb.st_mode)) { /* a deleted volume */
			int r = trash_scan_dir(fs, tfd, e->d_name, pick, bytes, &stuck);
			if (r == -1) {
				found = -1;
				break;
			}
			found |= r;
			if (r && !bytes && (!pick || fs->step_fd >= 0))
				break;
			continue;
		}
		if (!S_ISREG(sb.st_mode))
			continue; /* not ours: left alone */
		found = 1;
		if (bytes)
			*bytes += (uint64_t)sb.st_blocks * 512;
		if (pick && fs->step_fd == -1 && strlen(e->d_name) < sizeof fs->step_name) {
			if (step_open(fs, tfd, NULL, e->d_name, (uint64_t)sb.st_size) == -1) {
				/* cannot step it: unlink it whole (slow) */
				if (unlinkat(tfd, e->d_name, 0) == 0 || errno == ENOENT)
					found = 0;
				else
					stuck = errno;
				continue;
			}
		}
		if (!bytes && (!pick || fs->step_fd >= 0))
			break;
	}
	int err = errno;
	closedir(d);
	if (found != -1 && stuck && fs->step_fd == -1) {
		found = -1;
		err = stuck;
	}
	errno = err;
	return found;
}

/* Punch the next step of step_fd's data; true once it holds none. */
static bool
trash_punch(struct file_store *fs)
{
	uint64_t off = fs->step_off, size = fs->step_size;
	uint64_t start = 0, end = 0, bytes = 0;
	unsigned runs = 0;
	while (off < size && runs < TRASH_STEP_RUNS && bytes < TRASH_STEP_BYTES) {
		off_t data = lseek(fs->step_fd, (off_t)off, SEEK_DATA);
		if (data == -1) {
			off = size; /* ENXIO: no data left (else: the unlink frees it) */
			break;
		}
		off_t hole = lseek(fs->step_fd, data, SEEK_HOLE);
		if (hole == -1 || (uint64_t)hole <= (uint64_t)data) {
			off = size;
			break;
		}
		uint64_t len = (uint64_t)(hole - data);
		if (len > TRASH_STEP_BYTES - bytes)
			len = TRASH_STEP_BYTES - bytes;
		if (!runs)
			start = (uint64_t)data;
		end = (uint64_t)data + len;
		bytes += len;
		runs++;
		off = end;
	}
	/* One call over the runs and the holes between them. */
	if (runs && fallocate(fs->step_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)start,
			      (off_t)(end - start)) == -1)
		off = size; /* cannot punch: the unlink frees it in one go */
	fs->step_off = off;
	return off >= size;
}

static int
file_trash_step(struct sv_store *st, bool work, uint64_t *bytes_left)
{
	struct file_store *fs = (struct file_store *)st;
	int tfd = trash_dir(fs, false);
	if (tfd == -1) {
		if (errno != ENOENT)
			return -1;
		if (bytes_left)
			*bytes_left = 0;
		return 0; /* never made: empty */
	}
	pthread_mutex_lock(&fs->step_lock);
	int rc = 0;
	if (work) {
		if (fs->step_fd == -1)
			rc = trash_scan(fs, tfd, true, NULL);
		if (rc != -1 && fs->step_fd >= 0 && trash_punch(fs)) {
			close(fs->step_fd); /* empty now: unlinking it is quick */
			fs->step_fd = -1;
			if (unlinkat(tfd, fs->step_name, 0) == -1 && errno != ENOENT)
				rc = -1;
		}
	}
	if (rc != -1) {
		if (bytes_left)
			*bytes_left = 0;
		rc = fs->step_fd >= 0 ? 1 : 0;
		if (bytes_left || !rc) {
			int r = trash_scan(fs, tfd, false, bytes_left);
			rc = r == -1 ? -1 : (rc || r);
		}
	}
	int e = errno;
	pthread_mutex_unlock(&fs->step_lock);
	errno = e;
	return rc;
}

static uint64_t
file_obj_size(struct sv_obj *o)
{
	return ((struct file_obj *)o)->size;
}

static int
file_obj_pread(struct sv_obj *o, void *buf, size_t len, uint64_t off)
{
	return sv_full_pread(((struct file_obj *)o)->fd, buf, len, off);
}

static int
file_obj_pwrite(struct sv_obj *o, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	struct file_obj *fo = (struct file_obj *)o;
	if (!(flags & SV_STORE_FUA))
		return sv_full_pwrite(fo->fd, buf, len, off);
	/* FUA: RWF_DSYNC makes just this write durable, cheaper than a
	 * separate fdatasync of the whole file on filesystems that know how. */
	const char *p = buf;
	while (len > 0) {
		struct iovec iov = {.iov_base = (void *)p, .iov_len = len};
		ssize_t r = pwritev2(fo->fd, &iov, 1, (off_t)off, RWF_DSYNC);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EOPNOTSUPP || errno == EINVAL) {
				if (sv_full_pwrite(fo->fd, p, len, off) == -1)
					return -1;
				return fdatasync(fo->fd);
			}
			return -1;
		}
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static int
file_obj_sync(struct sv_obj *o)
{
	return fdatasync(((struct file_obj *)o)->fd);
}

/* Start writeback of the file's dirty pages: SYNC_FILE_RANGE_WRITE alone
 * only queues I/O (skipping pages already under writeback), so a later
 * fdatasync finds less to write.  It neither flushes the disk's cache nor
 * writes metadata: only fdatasync is durable. */
static int
file_obj_writeback(struct sv_obj *o)
{
	struct file_obj *fo = (struct file_obj *)o;
	for (;;) {
		if (sync_file_range(fo->fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

static int
write_zeros(int fd, uint64_t off, uint64_t len)
{
	static const char zeros[65536];
	while (len > 0) {
		size_t n = len < sizeof zeros ? (size_t)len : sizeof zeros;
		if (sv_full_pwrite(fd, zeros, n, off) == -1)
			return -1;
		off += n;
		len -= n;
	}
	return 0;
}

static int
file_obj_punch(struct sv_obj *o, uint64_t off, uint64_t len)
{
	struct file_obj *fo = (struct file_obj *)o;
	if (len == 0)
		return 0;
	if (fallocate(fo->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
	    0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -1;
	return write_zeros(fo->fd, off, len);
}

static int
file_obj_zero(struct sv_obj *o, uint64_t off, uint64_t len, unsigned flags)
{
	struct file_obj *fo = (struct file_obj *)o;
	if (len == 0)
		return 0;
	if ((flags & SV_ZERO_MAY_TRIM) &&
	    fallocate(fo->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
		0)
		return 0;
	if (fallocate(fo->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
	    0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -1;
	if (flags & SV_ZERO_FAST_ONLY) {
		errno = ENOTSUP;
		return -1;
	}
	return write_zeros(fo->fd, off, len);
}

static int
file_obj_extent(struct sv_obj *o, uint64_t off, uint64_t len, struct sv_extent *ext)
{
	struct file_obj *fo = (struct file_obj *)o;
	uint64_t end = off + len;
	if (end > fo->size)
		end = fo->size;
	ext->offset = off;
	off_t data = lseek(fo->fd, (off_t)off, SEEK_DATA);
	if (data == -1) {
		if (errno != ENXIO)
			return -1;
		data = (off_t)end; /* no data from off to the end */
	}
	if ((uint64_t)data > off) {
		ext->hole = true;
		ext->length = ((uint64_t)data < end ? (uint64_t)data : end) - off;
		return 0;
	}
	off_t hole = lseek(fo->fd, (off_t)off, SEEK_HOLE);
	if (hole == -1)
		return -1;
	ext->hole = false;
	ext->length = ((uint64_t)hole < end ? (uint64_t)hole : end) - off;
	if (ext->length == 0) /* cannot happen for off < size; be safe */
		ext->length = end - off;
	return 0;
}

static int
file_obj_cache(struct sv_obj *o, uint64_t off, uint64_t len)
{
	int r =
	    posix_fadvise(((struct file_obj *)o)->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
	if (r != 0) {
		errno = r;
		return -1;
	}
	return 0;
}

static int
file_obj_fd(struct sv_obj *o)
{
	return ((struct file_obj *)o)->fd;
}

static int
file_obj_allocated(struct sv_obj *o, uint64_t *bytes)
{
	struct stat sb;
	if (fstat(((struct file_obj *)o)->fd, &sb) == -1)
		return -1;
	*bytes = (uint64_t)sb.st_blocks * 512;
	return 0;
}

static int
file_obj_list(struct sv_store *st, const char *vol, char ***names, size_t *n)
{
	return list_dir(((struct file_store *)st)->volsfd, vol, ".raw", names, n);
}

static int
file_obj_locate(struct sv_store *st, const char *vol, const char *obj, char *buf, size_t len)
{
	struct file_store *fs = (struct file_store *)st;
	if ((size_t)snprintf(buf, len, "%s/volumes/%s/%s.raw", fs->dir, vol, obj) >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

const struct sv_store_ops sv_store_file_ops = {
    .struct_size = sizeof(struct sv_store_ops),
    .name = "file",
    .open = file_open,
    .close = file_close,
    .lock = file_lock,
    .describe = file_describe,
    .vol_list = file_vol_list,
    .vol_create = file_vol_create,
    .vol_remove = file_vol_remove,
    .meta_read = file_meta_read,
    .meta_write = file_meta_write,
    .meta_remove = file_meta_remove,
    .obj_open = file_obj_open,
    .obj_close = file_obj_close,
    .obj_remove = file_obj_remove,
    .obj_size = file_obj_size,
    .obj_pread = file_obj_pread,
    .obj_pwrite = file_obj_pwrite,
    .obj_sync = file_obj_sync,
    .obj_punch = file_obj_punch,
    .obj_zero = file_obj_zero,
    .obj_extent = file_obj_extent,
    .obj_cache = file_obj_cache,
    .obj_fd = file_obj_fd,
    .obj_allocated = file_obj_allocated,
    .obj_locate = file_obj_locate,
    .obj_list = file_obj_list,
    .obj_writeback = file_obj_writeback,
    .obj_trash = file_obj_trash,
    .trash_step = file_trash_step,
    .vol_trash = file_vol_trash,
};
