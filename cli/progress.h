/*
 * progress.h: progress reporting for long CLI work (backup, restore, send,
 * receive).
 *
 * Three modes, picked once at the start:
 *  - stderr is a terminal: one line redrawn in place (bytes done of total,
 *    a bar, rate, time left), at most ~10 times a second, so a progress
 *    bar never costs measurable time even at millions of small updates;
 *  - --json: a JSON object per line on stderr ({"progress": {...}}), at
 *    most once a second and once at the end, for programs to follow;
 *  - otherwise: quiet (logs and pipes stay clean).
 * Updates are cheap (a clock read is skipped unless enough bytes passed).
 */
#ifndef SV_PROGRESS_H
#define SV_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

enum sv_progress_mode { SV_PROGRESS_QUIET, SV_PROGRESS_BAR, SV_PROGRESS_JSON };

struct sv_progress {
	enum sv_progress_mode mode;
	const char *what; /* "backup", "send", ... */
	uint64_t total;	  /* bytes expected (0: unknown) */
	uint64_t done;
	uint64_t start_ns, last_ns;
	uint64_t last_done; /* done at the last check of the clock */
	bool drawn;	    /* a bar line is on screen */
};

/* json: the --json flag.  The mode follows from it and isatty(2). */
void sv_progress_start(struct sv_progress *p, const char *what, uint64_t total, bool json);
void sv_progress_set_total(struct sv_progress *p, uint64_t total);
void sv_progress_add(struct sv_progress *p, uint64_t bytes);
/* The last line (a bar ends with a newline); returns elapsed seconds. */
double sv_progress_end(struct sv_progress *p);
/* Format "1.2 GiB/s"-style rates and "1h02m"-style durations. */
const char *sv_progress_rate(double bytes_per_s, char *buf, size_t len);

#endif
