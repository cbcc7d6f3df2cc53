/*
 * fuzz-send-stream.c: libFuzzer target for the send-stream decoder
 * (cli/stream.c), the code "snapvol receive" runs on bytes from anywhere.
 *
 * The decoder is a pure function over bytes, so the target drives it the
 * way receive does: the input is split into reads of varying sizes (taken
 * from the input's first byte, so the fuzzer also explores how a stream is
 * cut), unparsed bytes are kept and compacted, and every item is checked
 * against what the decoder promises: it never asks for more than
 * SV_STREAM_BUF_MIN bytes, never consumes more than it was given, returns
 * records in ascending non-overlapping order inside the volume, DATA
 * payloads lie inside the buffer, an error is sticky, and a stream is
 * accepted only if it ended with its END record and nothing after it.
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined
 *        ninja -C build-fuzz fuzz/fuzz-send-stream
 * Run:   build-fuzz/fuzz/fuzz-send-stream fuzz/corpus/send-stream
 * Seeds: fuzz/corpus/send-stream/ holds real streams from "snapvol send"
 * (full and incremental) of small volumes, each preceded by the one byte
 * that sets the read size (00: 1-byte reads, 1b: 1000, ff: 9436); a seed
 * without that byte loses its first magic byte and never gets past it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *buf;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!buf && !(buf = malloc(SV_STREAM_BUF_MIN)))
		abort();
	size_t step = 1;
	if (size > 0) {
		step = (size_t)data[0] * 37 + 1;
		data++;
		size--;
	}
	struct sv_stream_parser p;
	sv_stream_parser_init(&p);
	size_t fed = 0, have = 0; /* input bytes read; bytes unparsed in buf */
	uint64_t prev_end = 0;
	bool ended = false;
	for (;;) {
		size_t used, need;
		struct sv_stream_record rec;
		enum sv_stream_result r = sv_stream_parse(&p, buf, have, &used, &need, &rec);
		if (r == SV_STREAM_ERROR) {
			if (!p.error[0] ||
			    sv_stream_parse(&p, buf, have, &used, &need, &rec) != SV_STREAM_ERROR)
				abort(); /* errors must say why, and stick */
			return 0;
		}
		if (r == SV_STREAM_NEED) {
			if (need > SV_STREAM_BUF_MIN || (need && need <= have))
				abort();
			if (fed == size) {
				int f = sv_stream_finish(&p, have);
				if (f == 0 && (!ended || have))
					abort();
				return 0;
			}
			size_t n = step;
			if (n > size - fed)
				n = size - fed;
			if (n > SV_STREAM_BUF_MIN - have)
				n = SV_STREAM_BUF_MIN - have;
			memcpy(buf + have, data + fed, n);
			have += n;
			fed += n;
			continue;
		}
		if (used == 0 || used > have)
			abort();
		if (r == SV_STREAM_RECORD) {
			if (rec.off < prev_end || rec.len == 0 || rec.off + rec.len < rec.off ||
			    rec.off + rec.len > p.hdr.volume_size)
				abort();
			if (rec.type == SV_REC_DATA &&
			    (rec.data < buf || rec.data + rec.len > buf + have))
				abort();
			prev_end = rec.off + rec.len;
		} else if (r == SV_STREAM_END) {
			ended = true;
		}
		memmove(buf, buf + used, have - used);
		have -= used;
	}
}
