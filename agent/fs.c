/*
 * fs.c: which filesystems to freeze, in which order, and their free space.
 *
 * A path is a mount point when /proc/self/mountinfo lists it (the last entry
 * wins: a later mount hides an earlier one at the same place); a stat() test
 * of the parent would miss bind mounts of one filesystem onto itself.  The
 * entry's major:minor is the filesystem's device, so two paths that name
 * the same filesystem are caught (FIFREEZE would answer EBUSY the second
 * time and look like "already frozen").
 *
 * Stacking: an image file on filesystem B, attached to /dev/loopN, with
 * filesystem A on it.  Freezing B first would hang A's own freeze (its
 * flush goes through the loop device into B's frozen file), so A is frozen
 * first and thawed last.  The relation is read from the kernel, not guessed:
 * /sys/dev/block/MAJ:MIN/loop/backing_file of A's device, then stat() of
 * that file gives the st_dev of the filesystem it lives on; if that is
 * itself a loop device, the chain is followed (a few levels).  Filesystems
 * with no relation keep the user's order.
 *
 * Free space: GETFSMAP (ext4, xfs) reports every extent of the device with
 * its owner; free space has the special owner FMR_OWN_FREE.  The free
 * ranges are the complement of all the other records within the span the
 * records cover, so a block the filesystem does not describe (past its end)
 * is never called free.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fsmap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "agent.h"
#include "error.h"

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void
unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

/* Find the mount at exactly path (canonical); fill dev, fstype, source. */
static int
find_mount(const char *path, struct sv_fs *fs)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return sv_error_errno("cannot read /proc/self/mountinfo");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	while (getline(&line, &cap, f) > 0) {
		unsigned maj, min;
		char mnt[PATH_MAX], fstype[32], source[256];
		/* id parent maj:min root mountpoint options [optional...] - type source super */
		if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &maj, &min, mnt) != 3)
			continue;
		unescape(mnt);
		if (strcmp(mnt, path))
			continue;
		const char *dash = strstr(line, " - ");
		if (!dash || sscanf(dash, " - %31s %255s", fstype, source) != 2)
			continue;
		unescape(source);
		fs->dev = makedev(maj, min);
		snprintf(fs->fstype, sizeof fs->fstype, "%s", fstype);
		snprintf(fs->source, sizeof fs->source, "%s", source);
		found = true; /* keep going: the last mount at a place is the visible one */
	}
	free(line);
	fclose(f);
	if (!found)
		return sv_error(EINVAL, "%s is not a mount point", path);
	return 0;
}

/* Bytes of block device dev, from sysfs; 0 if it is not a block device. */
static uint64_t
block_dev_size(dev_t dev)
{
	char p[96];
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/size", major(dev), minor(dev));
	FILE *f = fopen(p, "re");
	unsigned long long sectors = 0;
	if (!f)
		return 0;
	if (fscanf(f, "%llu", &sectors) != 1)
		sectors = 0;
	fclose(f);
	return sectors * 512;
}

/* If dev is a loop device, the st_dev of the filesystem holding its backing
 * file; 0 otherwise. */
static dev_t
loop_backing_dev(dev_t dev)
{
	char p[96], file[PATH_MAX];
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/loop/backing_file", major(dev), minor(dev));
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	char *ok = fgets(file, sizeof file, f);
	fclose(f);
	if (!ok)
		return 0;
	file[strcspn(file, "\n")] = '\0';
	struct stat st;
	/* "(deleted)" suffixes and vanished files simply end the chain */
	if (stat(file, &st) == -1)
		return 0;
	return st.st_dev;
}

int
sv_fs_resolve(const char *const *paths, size_t n, struct sv_fs *out)
{
	struct sv_fs fs[SV_AGENT_MAX_FS];
	if (n == 0)
		return sv_error(EINVAL, "no mount point given");
	if (n > SV_AGENT_MAX_FS)
		return sv_error(EINVAL, "at most %d mount points", SV_AGENT_MAX_FS);
	for (size_t i = 0; i < n; i++) {
		struct sv_fs *f = &fs[i];
		memset(f, 0, sizeof *f);
		char *real = realpath(paths[i], NULL);
		if (!real)
			return sv_error_errno("%s", paths[i]);
		struct stat st;
		if (stat(real, &st) == -1) {
			int e = errno;
			free(real);
			return sv_error(e, "%s: %s", paths[i], strerror(e));
		}
		if (!S_ISDIR(st.st_mode)) {
			free(real);
			return sv_error(EINVAL, "%s is not a mount point (not a directory)",
					paths[i]);
		}
		snprintf(f->path, sizeof f->path, "%s", real);
		free(real);
		if (find_mount(f->path, f) == -1)
			return -1;
		/* mountinfo's device is the superblock's; stat agrees except
		 * for filesystems with several devices (btrfs): use stat's,
		 * which is what loop backing files report too. */
		f->dev = st.st_dev;
		f->dev_size = block_dev_size(f->dev);
		f->below = -1;
		for (size_t j = 0; j < i; j++)
			if (fs[j].dev == f->dev)
				return sv_error(EINVAL, "%s and %s are the same filesystem",
						fs[j].path, f->path);
	}
	/* below[i]: the member holding i's image, following loop devices. */
	for (size_t i = 0; i < n; i++) {
		dev_t d = fs[i].dev;
		for (int depth = 0; depth < 8 && fs[i].below < 0; depth++) {
			d = loop_backing_dev(d);
			if (!d)
				break;
			for (size_t j = 0; j < n; j++)
				if (j != i && fs[j].dev == d)
					fs[i].below = (int)j;
		}
	}
	/* Top-down: emit, in the user's order, a filesystem nothing unemitted
	 * sits on. */
	bool done[SV_AGENT_MAX_FS] = {false};
	int map[SV_AGENT_MAX_FS];
	for (size_t k = 0; k < n; k++) {
		size_t pick = n;
		for (size_t i = 0; i < n && pick == n; i++) {
			if (done[i])
				continue;
			bool covered = false;
			for (size_t j = 0; j < n; j++)
				if (!done[j] && fs[j].below == (int)i)
					covered = true;
			if (!covered)
				pick = i;
		}
		if (pick == n) /* a cycle cannot happen; keep the user's order */
			for (pick = 0; done[pick]; pick++)
				;
		done[pick] = true;
		map[pick] = (int)k;
		out[k] = fs[pick];
	}
	for (size_t k = 0; k < n; k++)
		if (out[k].below >= 0)
			out[k].below = map[out[k].below];
	return 0;
}

/* The kernel's new_encode_dev, as GETFSMAP reports devices with FMH_OF_DEV_T. */
static uint32_t
kernel_dev(dev_t d)
{
	unsigned ma = major(d), mi = minor(d);
	return (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
}

/* Append [off, off+len); on failure frees *ranges. */
static int
add_range(struct sv_range **ranges, size_t *n, size_t *cap, uint64_t off, uint64_t len)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 256;
		struct sv_range *nr = realloc(*ranges, *cap * sizeof *nr);
		if (!nr) {
			free(*ranges);
			*ranges = NULL;
			return sv_error(ENOMEM, "out of memory");
		}
		*ranges = nr;
	}
	(*ranges)[*n].off = off;
	(*ranges)[*n].len = len;
	(*n)++;
	return 0;
}

int
sv_fs_free_ranges(int fd, dev_t dev, struct sv_range **out, size_t *n_out)
{
	enum { BATCH = 1024 };
	struct fsmap_head *h = calloc(1, fsmap_sizeof(BATCH));
	struct sv_range *ranges = NULL;
	size_t n = 0, cap = 0;
	uint64_t cursor = 0; /* end of the used space seen so far */
	uint64_t span = 0;   /* end of everything reported, free or not */
	bool have_dev = false;
	uint32_t want = 0;
	if (!h)
		return sv_error(ENOMEM, "out of memory");
	h->fmh_count = BATCH;
	h->fmh_keys[1].fmr_device = UINT32_MAX;
	h->fmh_keys[1].fmr_flags = UINT32_MAX;
	h->fmh_keys[1].fmr_physical = UINT64_MAX;
	h->fmh_keys[1].fmr_owner = UINT64_MAX;
	h->fmh_keys[1].fmr_offset = UINT64_MAX;
	for (;;) {
		if (ioctl(fd, FS_IOC_GETFSMAP, h) == -1) {
			int e = errno;
			free(h);
			free(ranges);
			if (e == ENOTTY || e == EOPNOTSUPP || e == EINVAL)
				return sv_error(EOPNOTSUPP, "the filesystem has no GETFSMAP");
			return sv_error(e, "GETFSMAP: %s", strerror(e));
		}
		if (h->fmh_entries == 0)
			break;
		if (!have_dev) {
			want = h->fmh_oflags & FMH_OF_DEV_T ? kernel_dev(dev)
							    : h->fmh_recs[0].fmr_device;
			have_dev = true;
		}
		bool last = false;
		for (uint32_t i = 0; i < h->fmh_entries; i++) {
			const struct fsmap *r = &h->fmh_recs[i];
			if (r->fmr_flags & FMR_OF_LAST)
				last = true;
			if (r->fmr_device != want)
				continue; /* an external log or realtime device */
			bool free_space =
			    (r->fmr_flags & FMR_OF_SPECIAL_OWNER) && r->fmr_owner == FMR_OWN_FREE;
			uint64_t end = r->fmr_physical + r->fmr_length;
			if (end > span)
				span = end;
			if (free_space)
				continue;
			if (r->fmr_physical > cursor &&
			    add_range(&ranges, &n, &cap, cursor, r->fmr_physical - cursor) == -1) {
				free(h);
				return -1;
			}
			if (end > cursor)
				cursor = end;
		}
		if (last)
			break;
		fsmap_advance(h);
	}
	free(h);
	if (span > cursor && add_range(&ranges, &n, &cap, cursor, span - cursor) == -1)
		return -1;
	*out = ranges;
	*n_out = n;
	return 0;
}
