/*
 * progress.c: the progress bar and JSON progress lines of progress.h.
 *
 * The rate is the average since the start (a backup reads at a steady
 * pace; a moving average would jitter with the server's caching), and time
 * left is (total - done) / rate.  The bar is drawn with \r and erased with
 * spaces on the same line, so no terminal control sequences are needed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "progress.h"
#include "util.h"

#define BAR_INTERVAL_NS	 (100 * 1000 * 1000ull)	 /* ~10 redraws a second */
#define JSON_INTERVAL_NS (1000 * 1000 * 1000ull) /* one line a second */
#define CHECK_BYTES	 (256 * 1024)		 /* read the clock at most this often */

const char *
sv_progress_rate(double bps, char *buf, size_t len)
{
	static const char *const units[] = {"B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"};
	int u = 0;
	while (bps >= 1024 && u < 4) {
		bps /= 1024;
		u++;
	}
	snprintf(buf, len, "%.1f %s", bps, units[u]);
	return buf;
}

static const char *
fmt_eta(double s, char *buf, size_t len)
{
	if (s < 0 || s > 359999)
		snprintf(buf, len, "--:--");
	else if (s >= 3600)
		snprintf(buf, len, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
	else
		snprintf(buf, len, "%02d:%02d", (int)s / 60, (int)s % 60);
	return buf;
}

void
sv_progress_start(struct sv_progress *p, const char *what, uint64_t total, bool json)
{
	memset(p, 0, sizeof *p);
	p->what = what;
	p->total = total;
	p->start_ns = p->last_ns = sv_now_ns();
	if (json)
		p->mode = SV_PROGRESS_JSON;
	else if (isatty(STDERR_FILENO))
		p->mode = SV_PROGRESS_BAR;
	else
		p->mode = SV_PROGRESS_QUIET;
}

void
sv_progress_set_total(struct sv_progress *p, uint64_t total)
{
	p->total = total;
}

static void
draw(struct sv_progress *p, uint64_t now, bool final)
{
	double secs = (double)(now - p->start_ns) / 1e9;
	double rate = secs > 0 ? (double)p->done / secs : 0;
	double eta = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
	if (p->mode == SV_PROGRESS_JSON) {
		fprintf(stderr,
			"{\"progress\": {\"operation\": \"%s\", \"done\": %" PRIu64
			", \"total\": %" PRIu64
			", \"seconds\": %.3f, \"rate\": %.0f, \"eta\": %.1f, "
			"\"final\": %s}}\n",
			p->what, p->done, p->total, secs, rate, final ? 0.0 : eta,
			final ? "true" : "false");
		return;
	}
	char done[32], total[32], r[32], e[32], bar[24];
	int pct = p->total ? (int)((double)p->done * 100 / (double)p->total) : 0;
	if (pct > 100)
		pct = 100;
	int fill = pct * 20 / 100;
	for (int i = 0; i < 20; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[20] = '\0';
	sv_format_size(p->done, done, sizeof done);
	sv_format_size(p->total, total, sizeof total);
	sv_progress_rate(rate, r, sizeof r);
	fmt_eta(final ? secs : eta, e, sizeof e);
	if (p->total)
		fprintf(stderr, "\r%s [%s] %3d%% %s / %s  %s  %s %s   ", p->what, bar, pct, done,
			total, r, final ? "in" : "left", e);
	else /* total unknown (a stream on stdin): no bar, no time left */
		fprintf(stderr, "\r%s %s  %s  %s %s   ", p->what, done, r, final ? "in" : "for",
			fmt_eta(secs, e, sizeof e));
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
	p->drawn = true;
}

void
sv_progress_add(struct sv_progress *p, uint64_t bytes)
{
	p->done += bytes;
	if (p->mode == SV_PROGRESS_QUIET || p->done - p->last_done < CHECK_BYTES)
		return;
	p->last_done = p->done;
	uint64_t now = sv_now_ns();
	uint64_t interval = p->mode == SV_PROGRESS_BAR ? BAR_INTERVAL_NS : JSON_INTERVAL_NS;
	if (now - p->last_ns < interval)
		return;
	p->last_ns = now;
	draw(p, now, false);
}

double
sv_progress_end(struct sv_progress *p)
{
	uint64_t now = sv_now_ns();
	if (p->mode != SV_PROGRESS_QUIET)
		draw(p, now, true);
	return (double)(now - p->start_ns) / 1e9;
}
