/* test_wire.c: the wire codec against schema/vectors/frames.vec (made by an independent
 * msgpack encoder), incremental decoding, hostile input, and CRC32C. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"

#define MAX_VECTORS 128
#define MAX_FIELDS 12

struct vec {
	char name[64];
	char keys[MAX_FIELDS][32];
	char vals[MAX_FIELDS][5200];
	int nfields;
	uint8_t bytes[8192];
	size_t nbytes;
};

static struct vec *vectors;
static int nvectors;

static const char *vec_get(const struct vec *v, const char *key)
{
	for (int i = 0; i < v->nfields; i++)
		if (strcmp(v->keys[i], key) == 0)
			return v->vals[i];
	return NULL;
}

static uint64_t vec_u64(const struct vec *v, const char *key, uint64_t dflt)
{
	const char *s = vec_get(v, key);
	return s ? strtoull(s, NULL, 10) : dflt;
}

static int load_vectors(void **state)
{
	(void)state;
	FILE *f = fopen(S3DLIO_VECTORS_DIR "/frames.vec", "r");
	if (!f)
		return -1;
	vectors = calloc(MAX_VECTORS, sizeof(*vectors));
	static char line[20000];
	struct vec *cur = NULL;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (line[0] == '#' || line[0] == 0)
			continue;
		if (line[0] == '[') {
			cur = &vectors[nvectors++];
			snprintf(cur->name, sizeof(cur->name), "%.*s", (int)strlen(line) - 2, line + 1);
			continue;
		}
		char *eq = strchr(line, '=');
		if (!cur || !eq)
			continue;
		*eq = 0;
		if (strcmp(line, "hex") == 0) {
			const char *h = eq + 1;
			cur->nbytes = strlen(h) / 2;
			for (size_t i = 0; i < cur->nbytes; i++)
				sscanf(h + 2 * i, "%2hhx", &cur->bytes[i]);
		} else {
			snprintf(cur->keys[cur->nfields], 32, "%.31s", line);
			snprintf(cur->vals[cur->nfields], 5200, "%.5199s", eq + 1);
			cur->nfields++;
		}
	}
	fclose(f);
	return nvectors > 0 ? 0 : -1;
}

static int free_vectors(void **state)
{
	(void)state;
	free(vectors);
	return 0;
}

static void assert_str_field(const char *want, const char *got, uint32_t got_len)
{
	if (!want) {
		assert_null(got);
		return;
	}
	assert_non_null(got);
	assert_int_equal(strlen(want), got_len);
	assert_memory_equal(want, got, got_len);
}

/* Every frame vector decodes to its fields and its fields encode to its exact bytes. */
static void test_vectors_decode_and_encode(void **state)
{
	(void)state;
	int checked = 0;
	for (int i = 0; i < nvectors; i++) {
		const struct vec *v = &vectors[i];
		if (vec_get(v, "expect"))
			continue;
		struct wire_frame f;
		size_t used = 0;
		int rc = wire_decode(v->bytes, v->nbytes, 0, &f, &used);
		if (rc != WIRE_OK)
			fail_msg("%s: decode gave %s", v->name, wire_result_str(rc));
		assert_int_equal(used, v->nbytes);
		assert_int_equal(f.type, vec_u64(v, "type", 0));
		assert_true(f.id == vec_u64(v, "id", 0));
		const char *uri = vec_get(v, "uri");
		if (uri)
			assert_str_field(uri, f.uri, f.uri_len);
		assert_true(f.offset == vec_u64(v, "offset", 0));
		assert_true(f.size == vec_u64(v, "size", 0));
		if (f.type == WIRE_GET)
			assert_true(f.length == vec_u64(v, "length", WIRE_TO_END));
		if (f.type == WIRE_HEADER) {
			assert_true(f.object_size == vec_u64(v, "object_size", 0));
			assert_true(f.mtime == strtoll(vec_get(v, "mtime"), NULL, 10));
			assert_str_field(vec_get(v, "etag"), f.etag, f.etag_len);
		}
		if (f.type == WIRE_HELLO)
			assert_str_field(vec_get(v, "token"), f.token, f.token_len);
		if (f.type == WIRE_ERROR) {
			assert_int_equal(f.code, vec_u64(v, "code", 0));
			assert_int_equal(f.retry_ms, vec_u64(v, "retry_ms", 0));
			assert_str_field(vec_get(v, "message"), f.message, f.message_len);
		}
		if (f.type == WIRE_END)
			assert_int_equal(f.crc32c, vec_u64(v, "crc32c", 0));
		if (f.type == WIRE_ENTRY)
			assert_int_equal(f.is_prefix, vec_u64(v, "is_prefix", 0));
		if (f.type == WIRE_DATA)
			assert_true(f.payload_len == vec_u64(v, "payload_len", 0));
		if (f.type == WIRE_WELCOME) {
			assert_int_equal(f.max_frame, vec_u64(v, "max_frame", 0));
			assert_int_equal(f.max_in_flight, vec_u64(v, "max_in_flight", 0));
		}

		/* re-encode the decoded frame: the bytes must be the vector's exactly */
		uint8_t out[WIRE_MAX_HEADER];
		size_t n = 0;
		assert_int_equal(wire_encode(&f, out, sizeof(out), &n), WIRE_OK);
		if (n != v->nbytes || memcmp(out, v->bytes, n) != 0)
			fail_msg("%s: encoding differs from the vector", v->name);
		checked++;
	}
	assert_true(checked >= 15);
}

/* Any strict prefix of a header is NEED_MORE, never a wrong frame. */
static void test_prefixes_need_more(void **state)
{
	(void)state;
	for (int i = 0; i < nvectors; i++) {
		const struct vec *v = &vectors[i];
		if (vec_get(v, "expect"))
			continue;
		for (size_t len = 0; len < v->nbytes; len++) {
			struct wire_frame f;
			size_t used = 0;
			int rc = wire_decode(v->bytes, len, 0, &f, &used);
			if (rc != WIRE_NEED_MORE)
				fail_msg("%s: prefix of %zu bytes gave %s", v->name, len,
					 wire_result_str(rc));
		}
	}
}

static int result_of(const char *name)
{
	if (strcmp(name, "NEED_MORE") == 0)
		return WIRE_NEED_MORE;
	if (strcmp(name, "MALFORMED") == 0)
		return WIRE_MALFORMED;
	if (strcmp(name, "TOO_BIG") == 0)
		return WIRE_TOO_BIG;
	return 1;
}

static void test_hostile_vectors(void **state)
{
	(void)state;
	int checked = 0;
	for (int i = 0; i < nvectors; i++) {
		const struct vec *v = &vectors[i];
		const char *expect = vec_get(v, "expect");
		if (!expect)
			continue;
		struct wire_frame f;
		size_t used = 0;
		/* give the decoder its bytes in a heap block of that exact size, so ASan sees
		 * any read past the end */
		uint8_t *copy = malloc(v->nbytes ? v->nbytes : 1);
		memcpy(copy, v->bytes, v->nbytes);
		int rc = wire_decode(copy, v->nbytes, 1u << 20, &f, &used);
		free(copy);
		if (rc != result_of(expect))
			fail_msg("%s: want %s, got %s", v->name, expect, wire_result_str(rc));
		checked++;
	}
	assert_true(checked >= 10);
}

/* A header that never completes within WIRE_MAX_HEADER bytes is refused. */
static void test_header_over_limit(void **state)
{
	(void)state;
	uint8_t *buf = malloc(WIRE_MAX_HEADER + 100);
	/* [2, 1, <str16 of 60000 bytes>...]: the string can never fit */
	buf[0] = 0x95;
	buf[1] = 0x02;
	buf[2] = 0x01;
	buf[3] = 0xda;
	buf[4] = 0x0f;
	buf[5] = 0xa0; /* 4000 bytes: allowed as a URI, but we cut the buffer short */
	memset(buf + 6, 'a', WIRE_MAX_HEADER + 94);
	struct wire_frame f;
	size_t used;
	assert_int_equal(wire_decode(buf, 100, 0, &f, &used), WIRE_NEED_MORE);
	/* with the whole URI present the frame still needs offset and length */
	assert_int_equal(wire_decode(buf, 6 + 4000, 0, &f, &used), WIRE_NEED_MORE);
	/* a valid GET padded with nil extra fields past the limit is refused as too big */
	static const uint8_t get[] = {0xdc, 0x1f, 0xfe, 0x02, 0x01, 0xa1, 'x', 0x00, 0xc0};
	memcpy(buf, get, sizeof(get));
	memset(buf + sizeof(get), 0xc0, WIRE_MAX_HEADER + 100 - sizeof(get));
	assert_int_equal(wire_decode(buf, WIRE_MAX_HEADER + 100, 0, &f, &used), WIRE_TOO_BIG);
	/* the same GET with few extras is fine */
	buf[1] = 0x00;
	buf[2] = 0x08;
	assert_int_equal(wire_decode(buf, WIRE_MAX_HEADER + 100, 0, &f, &used), WIRE_OK);
	assert_int_equal(used, sizeof(get) + 3);
	free(buf);
}

static void test_encode_no_space(void **state)
{
	(void)state;
	struct wire_frame f;
	wire_frame_init(&f, WIRE_GET, 1);
	f.uri = "file:///data/x.bin";
	f.uri_len = (uint32_t)strlen(f.uri);
	uint8_t out[8];
	size_t n;
	assert_int_equal(wire_encode(&f, out, sizeof(out), &n), WIRE_NO_SPACE);
	f.uri_len = WIRE_MAX_URI + 1;
	uint8_t big[WIRE_MAX_HEADER];
	assert_int_equal(wire_encode(&f, big, sizeof(big), &n), WIRE_TOO_BIG);
}

/* Bytes after a DATA header's bin marker are payload, not header. */
static void test_data_payload_follows(void **state)
{
	(void)state;
	struct wire_frame f;
	wire_frame_init(&f, WIRE_DATA, 42);
	f.offset = 8192;
	f.payload_len = 70000;
	uint8_t out[64];
	size_t n;
	assert_int_equal(wire_encode(&f, out, sizeof(out), &n), WIRE_OK);
	struct wire_frame g;
	size_t used;
	assert_int_equal(wire_decode(out, n, 0, &g, &used), WIRE_OK);
	assert_int_equal(used, n);
	assert_true(g.payload_len == 70000);
	assert_true(g.offset == 8192);
	/* over the receiver's announced limit */
	assert_int_equal(wire_decode(out, n, 65536, &g, &used), WIRE_TOO_BIG);
}

/* Random bytes never crash the decoder nor claim more than they hold. */
static void test_random_input(void **state)
{
	(void)state;
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	for (int iter = 0; iter < 200000; iter++) {
		uint8_t buf[48];
		size_t len = (size_t)(seed % sizeof(buf));
		for (size_t i = 0; i < len; i++) {
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			buf[i] = (uint8_t)seed;
		}
		if (len > 0 && iter % 2)
			buf[0] = (uint8_t)(0x92 + (iter % 5)); /* a plausible array header */
		struct wire_frame f;
		size_t used = 0;
		int rc = wire_decode(buf, len, 0, &f, &used);
		if (rc == WIRE_OK)
			assert_true(used <= len);
		else
			assert_true(rc == WIRE_NEED_MORE || rc == WIRE_MALFORMED || rc == WIRE_TOO_BIG);
		seed += 0x9e3779b97f4a7c15ull;
	}
}

static const struct vec *vec_named(const char *name)
{
	for (int i = 0; i < nvectors; i++)
		if (strcmp(vectors[i].name, name) == 0)
			return &vectors[i];
	fail_msg("no vector named %s", name);
	return NULL;
}

/* MKDIR and RMDIR: a frame built field by field encodes to the independent encoder's bytes,
 * and decodes back to its type and URI; a missing or wrong URI and an over-long one are
 * refused; scalar fields a newer peer appends are skipped. */
static void test_mkdir_rmdir_frames(void **state)
{
	(void)state;
	static const struct {
		const char *vec;
		uint32_t type;
		uint64_t id;
		const char *uri;
	} cases[] = {
	    {"mkdir", WIRE_MKDIR, 11, "file:///data/new/a/b/"},
	    {"mkdir_bucket", WIRE_MKDIR, (1ull << 32) + 1, "s3://new-bucket"},
	    {"rmdir", WIRE_RMDIR, 12, "file:///data/new/a/b"},
	    {"rmdir_container", WIRE_RMDIR, 300, "az://devstoreaccount1/old-container/"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct vec *v = vec_named(cases[i].vec);
		struct wire_frame f;
		wire_frame_init(&f, cases[i].type, cases[i].id);
		f.uri = cases[i].uri;
		f.uri_len = (uint32_t)strlen(cases[i].uri);
		uint8_t out[256];
		size_t n = 0;
		assert_int_equal(wire_encode(&f, out, sizeof(out), &n), WIRE_OK);
		assert_int_equal(n, v->nbytes);
		assert_memory_equal(out, v->bytes, n);

		struct wire_frame g;
		size_t used = 0;
		assert_int_equal(wire_decode(out, n, 0, &g, &used), WIRE_OK);
		assert_int_equal(used, n);
		assert_int_equal(g.type, cases[i].type);
		assert_true(g.id == cases[i].id);
		assert_str_field(cases[i].uri, g.uri, g.uri_len);
		assert_string_equal(wire_type_str(g.type),
		                    cases[i].type == WIRE_MKDIR ? "MKDIR" : "RMDIR");
	}

	/* [9, 1, "file:///x", 7, "later"]: the two appended scalars are skipped */
	static const uint8_t extra[] = {0x95, 0x09, 0x01, 0xa9, 'f',  'i', 'l', 'e', ':', '/',
	                                '/',  '/',  'x',  0x07, 0xa5, 'l', 'a', 't', 'e', 'r'};
	struct wire_frame g;
	size_t used = 0;
	assert_int_equal(wire_decode(extra, sizeof(extra), 0, &g, &used), WIRE_OK);
	assert_int_equal(used, sizeof(extra));
	assert_int_equal(g.type, WIRE_MKDIR);
	assert_str_field("file:///x", g.uri, g.uri_len);

	/* [10, 1]: no URI */
	static const uint8_t bare[] = {0x92, 0x0a, 0x01};
	assert_int_equal(wire_decode(bare, sizeof(bare), 0, &g, &used), WIRE_MALFORMED);

	/* encoding refuses a URI over the limit */
	struct wire_frame f;
	wire_frame_init(&f, WIRE_RMDIR, 5);
	f.uri = "s3://b/";
	f.uri_len = WIRE_MAX_URI + 1;
	uint8_t big[WIRE_MAX_HEADER];
	size_t n;
	assert_int_equal(wire_encode(&f, big, sizeof(big), &n), WIRE_TOO_BIG);
}

static void test_crc32c(void **state)
{
	(void)state;
	assert_int_equal(wire_crc32c(0, "123456789", 9), 0xE3069283u);
	uint32_t c = wire_crc32c(0, "1234", 4);
	assert_int_equal(wire_crc32c(c, "56789", 5), 0xE3069283u);
	assert_int_equal(wire_crc32c(0, "", 0), 0);
	/* 32 zero bytes: RFC 3720 B.4 */
	uint8_t z[32] = {0};
	assert_int_equal(wire_crc32c(0, z, sizeof(z)), 0x8A9136AAu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors_decode_and_encode),
		cmocka_unit_test(test_prefixes_need_more),
		cmocka_unit_test(test_hostile_vectors),
		cmocka_unit_test(test_header_over_limit),
		cmocka_unit_test(test_encode_no_space),
		cmocka_unit_test(test_data_payload_follows),
		cmocka_unit_test(test_random_input),
		cmocka_unit_test(test_mkdir_rmdir_frames),
		cmocka_unit_test(test_crc32c),
	};
	return cmocka_run_group_tests(tests, load_vectors, free_vectors);
}
