/* test_route.c: the server list of libs3dlio (clientlib/cl_route.c): how a URL list is split,
 * and the properties rendezvous hashing must have: every URI has one owner, owners are spread
 * evenly, and removing a server moves only the URIs it owned. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "cl_internal.h"

static void split_ok(const char *url, size_t want_n, const char *const *want)
{
	char **v = NULL, **names = NULL;
	size_t n = 0;
	s3dlio_error err = {0, ""};
	assert_int_equal(cl_route_split(url, &v, &names, &n, &err), 0);
	assert_int_equal(n, want_n);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(v[i], want[i]);
		assert_null(names[i]); /* nothing here is a DNS name with several addresses */
	}
	cl_route_free_list(v, names, n);
}

static void test_split(void **state)
{
	(void)state;
	const char *one[] = {"tcp://127.0.0.1:9400"};
	split_ok("tcp://127.0.0.1:9400", 1, one);
	const char *three[] = {"tcp://127.0.0.1:1", "unix:///run/s.sock", "tls://[::1]:3"};
	split_ok("tcp://127.0.0.1:1, unix:///run/s.sock ,\ttls://[::1]:3", 3, three);
	/* the same server twice counts once */
	const char *two[] = {"tcp://127.0.0.1:1", "tcp://127.0.0.1:2"};
	split_ok("tcp://127.0.0.1:1,tcp://127.0.0.1:2,tcp://127.0.0.1:1", 2, two);
	/* localhost has two addresses (127.0.0.1, ::1) but is one server */
	const char *lh[] = {"tcp://localhost:9400"};
	split_ok("tcp://localhost:9400", 1, lh);
}

static void split_bad(const char *url, int code, const char *needle)
{
	char **v = NULL, **names = NULL;
	size_t n = 0;
	s3dlio_error err = {0, ""};
	assert_int_equal(cl_route_split(url, &v, &names, &n, &err), code);
	assert_null(v);
	assert_int_equal(n, 0);
	if (!strstr(err.message, needle))
		fail_msg("'%s': message '%s' does not name '%s'", url, err.message, needle);
}

static void test_split_refuses(void **state)
{
	(void)state;
	split_bad("", S3DLIO_E_INVALID, "no server URL");
	split_bad("tcp://127.0.0.1:1,,tcp://127.0.0.1:2", S3DLIO_E_INVALID, "empty entry");
	split_bad("tcp://127.0.0.1:1,", S3DLIO_E_INVALID, "empty entry");
	split_bad("tcp://127.0.0.1:1,http://x:1", S3DLIO_E_INVALID, "http://x:1");
	split_bad("tcp://127.0.0.1", S3DLIO_E_INVALID, "tcp://HOST:PORT");
}

#define KEYS 30000

static unsigned owner(const uint64_t *members, unsigned n, const char *uri)
{
	unsigned best = 0;
	uint64_t top = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t s = cl_route_score(members[i], uri, strlen(uri));
		if (i == 0 || s > top) {
			top = s;
			best = i;
		}
	}
	return best;
}

static void test_rendezvous_spread_and_stability(void **state)
{
	(void)state;
	/* member identities as cl_route.c makes them: hashes of their URLs (any 64-bit values) */
	const uint64_t members[4] = {0x1234567890abcdefull, 0x0fedcba987654321ull,
	                             0xdeadbeefcafef00dull, 0x0123456789abcdefull};
	unsigned count[4] = {0};
	unsigned moved = 0, moved_wrongly = 0;
	for (unsigned k = 0; k < KEYS; k++) {
		char uri[64];
		snprintf(uri, sizeof(uri), "s3://bucket/train/shard-%05u.tar", k);
		unsigned o4 = owner(members, 4, uri);
		count[o4]++;
		/* the same answer every time */
		assert_int_equal(owner(members, 4, uri), o4);
		/* drop member 2: only its keys move */
		const uint64_t three[3] = {members[0], members[1], members[3]};
		unsigned o3 = owner(three, 3, uri);
		unsigned o3_as_4 = o3 == 2 ? 3 : o3;
		if (o4 != 2 && o3_as_4 != o4)
			moved_wrongly++;
		if (o4 == 2)
			moved++;
	}
	for (unsigned i = 0; i < 4; i++) {
		/* a quarter each, within a few percent */
		if (count[i] < KEYS / 4 * 9 / 10 || count[i] > KEYS / 4 * 11 / 10)
			fail_msg("member %u owns %u of %u keys", i, count[i], KEYS);
	}
	assert_int_equal(moved_wrongly, 0);
	assert_int_equal(moved, count[2]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split),
	    cmocka_unit_test(test_split_refuses),
	    cmocka_unit_test(test_rendezvous_spread_and_stability),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
