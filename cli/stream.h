/*
 * stream.h: the send stream ("snapvol send" / "snapvol receive"), version 1.
 *
 * docs/send-stream.md describes the format byte by byte.  In short: a
 * header (magic "SVSTREAM", version, flags, chunk size, volume size, a
 * random stream id, creation time, the source volume, snapshot and base
 * snapshot names, CRC-32), then records in ascending, non-overlapping
 * offset order (DATA with its bytes, ZERO for a run that reads as zeros),
 * each with a CRC-32 over its header and payload and, in an incremental
 * stream, the CRC-32 of the sender's base bytes over the same extent (the
 * base fingerprint: the receiver compares it with its own base before it
 * writes), and an END record with the totals.  All integers little-endian.
 *
 * The decoder is a pure function over bytes (no I/O, no allocation): the
 * caller hands it what it has read so far and it either says how many more
 * bytes it needs, returns one parsed item (pointing into the caller's
 * buffer), or refuses the stream with a message.  So the same code runs in
 * "snapvol receive", in the unit tests and under libFuzzer
 * (fuzz/fuzz-send-stream.c), and a record is never acted on before its
 * CRC has been checked.
 */
#ifndef SV_STREAM_H
#define SV_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"

#define SV_STREAM_MAGIC	  "SVSTREAM"
#define SV_STREAM_VERSION 1u

#define SV_STREAM_F_INCREMENTAL 0x1u /* the only flag of version 1 */

/* Fixed part of the header, before the names and the CRC. */
#define SV_STREAM_HEADER_FIXED 60u
#define SV_STREAM_HEADER_MAX   (SV_STREAM_HEADER_FIXED + 3 * SV_NAME_MAX + 4)
#define SV_STREAM_REC_HEADER   32u
#define SV_STREAM_END_PAYLOAD  40u
/* Largest DATA record payload: bounds the receiver's buffer. */
#define SV_STREAM_MAX_DATA (4u << 20)
/* A buffer this large always holds the next item. */
#define SV_STREAM_BUF_MIN (SV_STREAM_REC_HEADER + SV_STREAM_MAX_DATA)

enum sv_stream_rec_type {
	SV_REC_DATA = 1,
	SV_REC_ZERO = 2,
	SV_REC_END = 3,
};

struct sv_stream_header {
	uint32_t version;
	uint32_t flags;
	uint32_t chunk_size;
	uint64_t volume_size;
	uint8_t id[16];
	uint64_t created; /* seconds since the Unix epoch */
	char volume[SV_NAME_MAX + 1];
	char snapshot[SV_NAME_MAX + 1];
	char base[SV_NAME_MAX + 1]; /* "" in a full stream */
};

struct sv_stream_record {
	enum sv_stream_rec_type type;
	uint64_t off, len;   /* DATA and ZERO */
	uint32_t base_crc;   /* incremental: CRC-32 of the base's bytes at [off, off+len) */
	const uint8_t *data; /* DATA: len bytes, inside the caller's buffer */
	uint64_t records;    /* END: DATA and ZERO records before it */
	uint64_t data_bytes; /* END */
	uint64_t zero_bytes; /* END */
};

enum sv_stream_state {
	SV_STREAM_ST_HEADER, /* expecting the header */
	SV_STREAM_ST_RECORDS,
	SV_STREAM_ST_DONE,  /* END seen: nothing may follow */
	SV_STREAM_ST_ERROR, /* refused: sticky */
};

/* Decoder state: zero-initialise it (or sv_stream_parser_init). */
struct sv_stream_parser {
	enum sv_stream_state state;
	struct sv_stream_header hdr;
	uint64_t next_off; /* records must start at or after this */
	uint64_t records, data_bytes, zero_bytes;
	char error[200];
};

enum sv_stream_result {
	SV_STREAM_ERROR = -1, /* p->error says why; every later call fails too */
	SV_STREAM_NEED = 0,   /* *need: bytes the buffer must hold from its start */
	SV_STREAM_HEADER = 1, /* p->hdr is filled */
	SV_STREAM_RECORD = 2, /* *rec is a DATA or ZERO record */
	SV_STREAM_END = 3,    /* *rec is the END record; the stream is complete */
};

void sv_stream_parser_init(struct sv_stream_parser *p);
/* Parse the next item from buf[0..len).  On HEADER/RECORD/END, *used is
 * the number of bytes it took (the caller drops them once it has used the
 * item); on NEED, *need is how many bytes buf must hold (never more than
 * SV_STREAM_BUF_MIN).  At end of input, call sv_stream_finish. */
enum sv_stream_result sv_stream_parse(struct sv_stream_parser *p, const uint8_t *buf, size_t len,
				      size_t *used, size_t *need, struct sv_stream_record *rec);
/* The input ended with left unparsed bytes: 0 if the stream was complete
 * and nothing is left, else -1 with p->error set (truncated stream). */
int sv_stream_finish(struct sv_stream_parser *p, size_t left);

/* ---- encoder ---- */

/* Encode the header into out (SV_STREAM_HEADER_MAX bytes); returns its
 * length, or 0 if a field is invalid (names, sizes, flags). */
size_t sv_stream_encode_header(const struct sv_stream_header *h, uint8_t *out);
/* The 32-byte header of a DATA (payload = the len bytes) or ZERO record
 * (payload NULL); the CRC covers the header and the payload. */
void sv_stream_encode_record(uint8_t out[SV_STREAM_REC_HEADER], enum sv_stream_rec_type type,
			     uint64_t off, uint64_t len, uint32_t base_crc, const void *payload);
/* The END record: header and payload, SV_STREAM_REC_HEADER +
 * SV_STREAM_END_PAYLOAD bytes. */
void sv_stream_encode_end(uint8_t out[SV_STREAM_REC_HEADER + SV_STREAM_END_PAYLOAD],
			  const uint8_t id[16], uint64_t records, uint64_t data_bytes,
			  uint64_t zero_bytes);

/* CRC-32 (IEEE, zlib's), continuing from crc (start with 0). */
uint32_t sv_crc32(uint32_t crc, const void *buf, size_t len);

#endif
