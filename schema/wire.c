/* wire.c: encode and decode s3dlio frames (PROTOCOL.md).
 *
 * Encoding uses msgpack-c's packer over a fixed, bounded output buffer. Decoding is a small
 * reader of the msgpack subset the protocol uses, written here rather than with msgpack-c's
 * unpacker because that unpacker allocates an array's elements from the count it reads
 * before it has seen them: a five-byte hostile header could ask for gigabytes. This reader
 * allocates nothing, checks every count and length against the bytes present and the
 * protocol's limits, and tells "incomplete" (read more) apart from "malformed". */
#include "wire.h"

#include <isa-l/crc.h>
#include <msgpack.h>
#include <string.h>

/* ---- decoding ---- */

struct rd {
	const uint8_t *p;
	const uint8_t *end;
	int err; /* first error, sticky: WIRE_NEED_MORE, WIRE_MALFORMED or WIRE_TOO_BIG */
};

static int rd_need(struct rd *r, size_t n)
{
	if (r->err)
		return 0;
	if ((size_t)(r->end - r->p) < n) {
		r->err = WIRE_NEED_MORE;
		return 0;
	}
	return 1;
}

static uint64_t rd_be(struct rd *r, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | r->p[i];
	r->p += n;
	return v;
}

static void rd_fail(struct rd *r, int err)
{
	if (!r->err)
		r->err = err;
}

static int64_t rd_int(struct rd *r);

/* An unsigned integer (negative values are malformed). */
static uint64_t rd_uint(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	uint8_t b = *r->p;
	if (b <= 0x7f) {
		r->p++;
		return b;
	}
	unsigned n = 0;
	switch (b) {
	case 0xcc: n = 1; break;
	case 0xcd: n = 2; break;
	case 0xce: n = 4; break;
	case 0xcf: n = 8; break;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		/* a signed encoding of a non-negative value is accepted */
		int64_t v = rd_int(r);
		if (v < 0)
			rd_fail(r, WIRE_MALFORMED);
		return (uint64_t)v;
	}
	default:
		rd_fail(r, WIRE_MALFORMED);
		return 0;
	}
	if (!rd_need(r, 1 + n))
		return 0;
	r->p++;
	return rd_be(r, n);
}

static int64_t rd_int(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	uint8_t b = *r->p;
	if (b >= 0xe0) {
		r->p++;
		return (int8_t)b;
	}
	if (b >= 0xd0 && b <= 0xd3) {
		unsigned n = 1u << (b - 0xd0);
		if (!rd_need(r, 1 + n))
			return 0;
		r->p++;
		uint64_t raw = rd_be(r, n);
		if (n < 8 && (raw & (1ull << (n * 8 - 1))))
			raw |= ~0ull << (n * 8); /* sign-extend */
		return (int64_t)raw;
	}
	uint64_t v = rd_uint(r);
	if (v > INT64_MAX)
		rd_fail(r, WIRE_MALFORMED);
	return (int64_t)v;
}

static int rd_is_nil(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	if (*r->p == 0xc0) {
		r->p++;
		return 1;
	}
	return 0;
}

static int rd_bool(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	uint8_t b = *r->p++;
	if (b == 0xc2)
		return 0;
	if (b == 0xc3)
		return 1;
	rd_fail(r, WIRE_MALFORMED);
	return 0;
}

/* Well-formed UTF-8: no overlongs, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = p[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t k;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0) {
			k = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return 0;
		}
		if (n - i <= k)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (p[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* A str of at most max bytes; *s points into the input. */
static void rd_str(struct rd *r, const char **s, uint32_t *len, uint32_t max)
{
	*s = NULL;
	*len = 0;
	if (!rd_need(r, 1))
		return;
	uint8_t b = *r->p;
	uint64_t n;
	unsigned hdr;
	if ((b & 0xe0) == 0xa0) {
		n = b & 0x1f;
		hdr = 1;
	} else if (b == 0xd9 || b == 0xda || b == 0xdb) {
		unsigned w = b == 0xd9 ? 1 : b == 0xda ? 2 : 4;
		if (!rd_need(r, 1 + w))
			return;
		r->p++;
		n = rd_be(r, w);
		r->p -= 1 + w;
		hdr = 1 + w;
	} else {
		rd_fail(r, WIRE_MALFORMED);
		return;
	}
	if (n > max) {
		rd_fail(r, WIRE_TOO_BIG);
		return;
	}
	if (!rd_need(r, hdr + n))
		return;
	if (!utf8_valid(r->p + hdr, (size_t)n)) {
		rd_fail(r, WIRE_MALFORMED); /* msgpack str is UTF-8; we echo URIs in messages */
		return;
	}
	*s = (const char *)r->p + hdr;
	*len = (uint32_t)n;
	r->p += hdr + n;
}

static void rd_opt_str(struct rd *r, const char **s, uint32_t *len, uint32_t max)
{
	if (rd_is_nil(r)) {
		*s = NULL;
		*len = 0;
		return;
	}
	rd_str(r, s, len, max);
}

/* The length of a bin marker's payload (the payload itself is not consumed). */
static uint64_t rd_bin_marker(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	uint8_t b = *r->p;
	unsigned w = b == 0xc4 ? 1 : b == 0xc5 ? 2 : b == 0xc6 ? 4 : 0;
	if (!w) {
		rd_fail(r, WIRE_MALFORMED);
		return 0;
	}
	if (!rd_need(r, 1 + w))
		return 0;
	r->p++;
	return rd_be(r, w);
}

static uint32_t rd_array(struct rd *r)
{
	if (!rd_need(r, 1))
		return 0;
	uint8_t b = *r->p;
	if ((b & 0xf0) == 0x90) {
		r->p++;
		return b & 0x0f;
	}
	unsigned w = b == 0xdc ? 2 : b == 0xdd ? 4 : 0;
	if (!w) {
		rd_fail(r, WIRE_MALFORMED);
		return 0;
	}
	if (!rd_need(r, 1 + w))
		return 0;
	r->p++;
	uint64_t n = rd_be(r, w);
	/* every element takes at least one byte of a header that is at most WIRE_MAX_HEADER */
	if (n > WIRE_MAX_HEADER) {
		rd_fail(r, WIRE_TOO_BIG);
		return 0;
	}
	return (uint32_t)n;
}

/* Skip one scalar value (fields a newer peer appended). Containers are refused: headers
 * are flat arrays. */
static void rd_skip_scalar(struct rd *r)
{
	if (!rd_need(r, 1))
		return;
	uint8_t b = *r->p;
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
		r->p++;
		return;
	}
	if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
		const char *s;
		uint32_t n;
		rd_str(r, &s, &n, WIRE_MAX_HEADER);
		return;
	}
	if (b >= 0xc4 && b <= 0xc6) {
		uint64_t n = rd_bin_marker(r);
		if (n > WIRE_MAX_HEADER)
			rd_fail(r, WIRE_TOO_BIG);
		else if (rd_need(r, n))
			r->p += n;
		return;
	}
	static const unsigned fixed[] = {[0xca - 0xca] = 4, [0xcb - 0xca] = 8, [0xcc - 0xca] = 1,
					 [0xcd - 0xca] = 2, [0xce - 0xca] = 4, [0xcf - 0xca] = 8,
					 [0xd0 - 0xca] = 1, [0xd1 - 0xca] = 2, [0xd2 - 0xca] = 4,
					 [0xd3 - 0xca] = 8};
	if (b >= 0xca && b <= 0xd3) {
		unsigned n = fixed[b - 0xca];
		if (rd_need(r, 1 + n))
			r->p += 1 + n;
		return;
	}
	rd_fail(r, WIRE_MALFORMED);
}

/* Fields each type requires after [type, id]. */
static int fields_needed(uint32_t type)
{
	switch (type) {
	case WIRE_HELLO: return 3;
	case WIRE_GET: return 3;
	case WIRE_STAT: return 1;
	case WIRE_LIST: return 2;
	case WIRE_PUT: return 2;
	case WIRE_DELETE: return 1;
	case WIRE_PREFETCH: return 1;
	case WIRE_MKDIR: return 1;
	case WIRE_RMDIR: return 1;
	case WIRE_CANCEL: return 0;
	case WIRE_WELCOME: return 4;
	case WIRE_HEADER: return 4;
	case WIRE_ENTRY: return 4;
	case WIRE_ERROR: return 3;
	case WIRE_DATA: return 1;
	case WIRE_END: return 2;
	default: return -1;
	}
}

int wire_decode(const uint8_t *buf, size_t len, uint32_t max_payload, struct wire_frame *f,
		size_t *consumed)
{
	struct rd r = {buf, buf + (len > WIRE_MAX_HEADER ? WIRE_MAX_HEADER : len), 0};
	uint32_t n = rd_array(&r);
	if (!r.err && n < 2)
		rd_fail(&r, WIRE_MALFORMED); /* before reading on: [] is complete and wrong */
	uint32_t type = (uint32_t)rd_uint(&r);
	uint64_t id = rd_uint(&r);
	if (r.err)
		goto done;
	int need = fields_needed(type);
	if (need < 0 || n - 2 < (uint32_t)need) {
		rd_fail(&r, WIRE_MALFORMED);
		goto done;
	}
	wire_frame_init(f, type, id);
	switch (type) {
	case WIRE_HELLO:
		f->version = (uint32_t)rd_uint(&r);
		rd_opt_str(&r, &f->token, &f->token_len, WIRE_MAX_TOKEN);
		rd_str(&r, &f->agent, &f->agent_len, 256);
		break;
	case WIRE_GET:
		rd_str(&r, &f->uri, &f->uri_len, WIRE_MAX_URI);
		f->offset = rd_uint(&r);
		f->length = rd_is_nil(&r) ? WIRE_TO_END : rd_uint(&r);
		break;
	case WIRE_STAT:
	case WIRE_DELETE:
	case WIRE_PREFETCH:
	case WIRE_MKDIR:
	case WIRE_RMDIR:
		rd_str(&r, &f->uri, &f->uri_len, WIRE_MAX_URI);
		break;
	case WIRE_LIST:
		rd_str(&r, &f->uri, &f->uri_len, WIRE_MAX_URI);
		f->flags = (uint32_t)rd_uint(&r);
		break;
	case WIRE_PUT:
		rd_str(&r, &f->uri, &f->uri_len, WIRE_MAX_URI);
		f->size = rd_uint(&r);
		break;
	case WIRE_CANCEL:
		break;
	case WIRE_WELCOME:
		f->version = (uint32_t)rd_uint(&r);
		f->max_frame = (uint32_t)rd_uint(&r);
		f->max_in_flight = (uint32_t)rd_uint(&r);
		rd_str(&r, &f->agent, &f->agent_len, 256);
		break;
	case WIRE_HEADER:
		f->size = rd_uint(&r);
		f->object_size = rd_uint(&r);
		f->mtime = rd_int(&r);
		rd_opt_str(&r, &f->etag, &f->etag_len, WIRE_MAX_ETAG);
		break;
	case WIRE_ENTRY:
		rd_str(&r, &f->uri, &f->uri_len, WIRE_MAX_URI);
		f->size = rd_uint(&r);
		f->mtime = rd_int(&r);
		f->is_prefix = (uint32_t)rd_bool(&r);
		break;
	case WIRE_ERROR:
		f->code = (uint32_t)rd_uint(&r);
		rd_str(&r, &f->message, &f->message_len, WIRE_MAX_MESSAGE);
		f->retry_ms = (uint32_t)rd_uint(&r);
		break;
	case WIRE_DATA:
		f->offset = rd_uint(&r);
		break;
	case WIRE_END:
		f->size = rd_uint(&r);
		f->crc32c = (uint32_t)rd_uint(&r);
		break;
	}
	for (uint32_t i = 2 + (uint32_t)need; i < n && !r.err; i++)
		rd_skip_scalar(&r);
	if (type == WIRE_DATA && !r.err) {
		uint64_t plen = rd_bin_marker(&r);
		uint32_t cap = max_payload ? max_payload : WIRE_MAX_FRAME_CAP;
		if (!r.err && plen > cap)
			rd_fail(&r, WIRE_TOO_BIG);
		f->payload_len = plen;
	}
done:
	if (r.err == WIRE_NEED_MORE && len >= WIRE_MAX_HEADER)
		return WIRE_TOO_BIG; /* no complete header fits in the limit */
	if (r.err)
		return r.err;
	*consumed = (size_t)(r.p - buf);
	return WIRE_OK;
}

/* ---- encoding ---- */

struct wr {
	uint8_t *buf;
	size_t cap;
	size_t len;
	int overflow;
};

static int wr_write(void *data, const char *src, size_t n)
{
	struct wr *w = data;
	if (w->cap - w->len < n) {
		w->overflow = 1;
		return -1;
	}
	memcpy(w->buf + w->len, src, n);
	w->len += n;
	return 0;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pack_opt_str(msgpack_packer *pk, const char *s, size_t n)
{
	if (s)
		pack_str(pk, s, n);
	else
		msgpack_pack_nil(pk);
}

int wire_encode(const struct wire_frame *f, uint8_t *out, size_t cap, size_t *len)
{
	int need = fields_needed(f->type);
	if (need < 0)
		return WIRE_MALFORMED;
	if (f->uri_len > WIRE_MAX_URI || f->etag_len > WIRE_MAX_ETAG || f->token_len > WIRE_MAX_TOKEN ||
	    (f->type == WIRE_DATA && f->payload_len > WIRE_MAX_FRAME_CAP))
		return WIRE_TOO_BIG;
	struct wr w = {out, cap, 0, 0};
	msgpack_packer pk;
	msgpack_packer_init(&pk, &w, wr_write);
	msgpack_pack_array(&pk, 2 + (size_t)need);
	msgpack_pack_uint32(&pk, f->type);
	msgpack_pack_uint64(&pk, f->id);
	switch (f->type) {
	case WIRE_HELLO:
		msgpack_pack_uint32(&pk, f->version);
		pack_opt_str(&pk, f->token, f->token_len);
		pack_str(&pk, f->agent ? f->agent : "", f->agent ? f->agent_len : 0);
		break;
	case WIRE_GET:
		pack_str(&pk, f->uri, f->uri_len);
		msgpack_pack_uint64(&pk, f->offset);
		if (f->length == WIRE_TO_END)
			msgpack_pack_nil(&pk);
		else
			msgpack_pack_uint64(&pk, f->length);
		break;
	case WIRE_STAT:
	case WIRE_DELETE:
	case WIRE_PREFETCH:
	case WIRE_MKDIR:
	case WIRE_RMDIR:
		pack_str(&pk, f->uri, f->uri_len);
		break;
	case WIRE_LIST:
		pack_str(&pk, f->uri, f->uri_len);
		msgpack_pack_uint32(&pk, f->flags);
		break;
	case WIRE_PUT:
		pack_str(&pk, f->uri, f->uri_len);
		msgpack_pack_uint64(&pk, f->size);
		break;
	case WIRE_CANCEL:
		break;
	case WIRE_WELCOME:
		msgpack_pack_uint32(&pk, f->version);
		msgpack_pack_uint32(&pk, f->max_frame);
		msgpack_pack_uint32(&pk, f->max_in_flight);
		pack_str(&pk, f->agent ? f->agent : "", f->agent ? f->agent_len : 0);
		break;
	case WIRE_HEADER:
		msgpack_pack_uint64(&pk, f->size);
		msgpack_pack_uint64(&pk, f->object_size);
		msgpack_pack_int64(&pk, f->mtime);
		pack_opt_str(&pk, f->etag, f->etag_len);
		break;
	case WIRE_ENTRY:
		pack_str(&pk, f->uri, f->uri_len);
		msgpack_pack_uint64(&pk, f->size);
		msgpack_pack_int64(&pk, f->mtime);
		if (f->is_prefix)
			msgpack_pack_true(&pk);
		else
			msgpack_pack_false(&pk);
		break;
	case WIRE_ERROR:
		msgpack_pack_uint32(&pk, f->code);
		/* a long message is cut, not refused: the error must still reach the peer */
		pack_str(&pk, f->message ? f->message : "",
			 f->message ? (f->message_len > WIRE_MAX_MESSAGE ? WIRE_MAX_MESSAGE
									 : f->message_len)
				    : 0);
		msgpack_pack_uint32(&pk, f->retry_ms);
		break;
	case WIRE_DATA:
		msgpack_pack_uint64(&pk, f->offset);
		msgpack_pack_bin(&pk, (size_t)f->payload_len);
		break;
	case WIRE_END:
		msgpack_pack_uint64(&pk, f->size);
		msgpack_pack_uint32(&pk, f->crc32c);
		break;
	}
	if (w.overflow)
		return WIRE_NO_SPACE;
	*len = w.len;
	return WIRE_OK;
}

void wire_frame_init(struct wire_frame *f, uint32_t type, uint64_t id)
{
	memset(f, 0, sizeof(*f));
	f->type = type;
	f->id = id;
	f->length = WIRE_TO_END;
}

const char *wire_result_str(int result)
{
	switch (result) {
	case WIRE_OK: return "ok";
	case WIRE_NEED_MORE: return "incomplete frame";
	case WIRE_MALFORMED: return "malformed frame";
	case WIRE_TOO_BIG: return "frame over the protocol's limits";
	case WIRE_NO_SPACE: return "frame does not fit the output buffer";
	default: return "unknown result";
	}
}

const char *wire_code_str(uint32_t code)
{
	static const char *const names[] = {
		[WIRE_E_NOT_FOUND] = "NOT_FOUND",	[WIRE_E_PERMISSION] = "PERMISSION",
		[WIRE_E_INVALID] = "INVALID",		[WIRE_E_BUSY] = "BUSY",
		[WIRE_E_BACKEND] = "BACKEND",		[WIRE_E_IO] = "IO",
		[WIRE_E_TOO_LARGE] = "TOO_LARGE",	[WIRE_E_CANCELLED] = "CANCELLED",
		[WIRE_E_PROTOCOL] = "PROTOCOL",		[WIRE_E_RANGE] = "RANGE",
		[WIRE_E_UNSUPPORTED] = "UNSUPPORTED",	[WIRE_E_CHECKSUM] = "CHECKSUM",
		[WIRE_E_SHUTDOWN] = "SHUTDOWN",		[WIRE_E_TIMEOUT] = "TIMEOUT",
		[WIRE_E_INTERNAL] = "INTERNAL",
	};
	if (code < sizeof(names) / sizeof(names[0]) && names[code])
		return names[code];
	return "UNKNOWN";
}

const char *wire_type_str(uint32_t type)
{
	switch (type) {
	case WIRE_HELLO: return "HELLO";
	case WIRE_GET: return "GET";
	case WIRE_STAT: return "STAT";
	case WIRE_LIST: return "LIST";
	case WIRE_PUT: return "PUT";
	case WIRE_DELETE: return "DELETE";
	case WIRE_CANCEL: return "CANCEL";
	case WIRE_PREFETCH: return "PREFETCH";
	case WIRE_MKDIR: return "MKDIR";
	case WIRE_RMDIR: return "RMDIR";
	case WIRE_WELCOME: return "WELCOME";
	case WIRE_HEADER: return "HEADER";
	case WIRE_ENTRY: return "ENTRY";
	case WIRE_ERROR: return "ERROR";
	case WIRE_DATA: return "DATA";
	case WIRE_END: return "END";
	default: return "UNKNOWN";
	}
}

uint32_t wire_crc32c(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	/* isa-l takes an int length and leaves the pre/post inversion to the caller */
	crc = ~crc;
	while (len > 0) {
		int n = len > (1u << 30) ? (1 << 30) : (int)len;
		crc = crc32_iscsi((unsigned char *)p, n, crc);
		p += n;
		len -= (size_t)n;
	}
	return ~crc;
}
