/* test_crccache.c: the whole-file CRC32C table (server/crccache.c): keys, the settle rule
 * that keeps racily written files out, replacement within a full set, and the off switch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>
#include <sys/stat.h>

#include "crccache.h"

#define SEC 1000000000LL
#define NOW (1000 * SEC)

static struct crccache_key key(uint64_t ino, uint64_t size, int64_t mtime_ns, int64_t ctime_ns)
{
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_dev = 7;
	st.st_ino = ino;
	st.st_size = (off_t)size;
	st.st_mtim.tv_sec = mtime_ns / SEC;
	st.st_mtim.tv_nsec = mtime_ns % SEC;
	st.st_ctim.tv_sec = ctime_ns / SEC;
	st.st_ctim.tv_nsec = ctime_ns % SEC;
	struct crccache_key k;
	crccache_key_of(&st, &k);
	return k;
}

static void test_store_and_find(void **state)
{
	(void)state;
	struct crccache *cc = crccache_new(16);
	assert_non_null(cc);
	struct crccache_key k = key(1, 100, NOW - 10 * SEC, NOW - 10 * SEC);
	uint32_t crc = 0;
	assert_int_equal(crccache_get(cc, &k, &crc), 0);
	crccache_put(cc, &k, 0xdeadbeef, NOW);
	assert_int_equal(crccache_get(cc, &k, &crc), 1);
	assert_int_equal(crc, 0xdeadbeef);
	uint64_t hits, misses, stores;
	crccache_counts(cc, &hits, &misses, &stores);
	assert_int_equal(hits, 1);
	assert_int_equal(misses, 1);
	assert_int_equal(stores, 1);
	crccache_free(cc);
}

/* Every field of the key tells files apart: a rewrite changes ctime even when mtime is put
 * back, a truncation changes the size, another file has another inode. */
static void test_every_field_counts(void **state)
{
	(void)state;
	struct crccache *cc = crccache_new(64);
	struct crccache_key k = key(1, 100, NOW - 10 * SEC, NOW - 10 * SEC);
	crccache_put(cc, &k, 1, NOW);
	struct crccache_key other[] = {
	    key(2, 100, NOW - 10 * SEC, NOW - 10 * SEC),
	    key(1, 101, NOW - 10 * SEC, NOW - 10 * SEC),
	    key(1, 100, NOW - 10 * SEC + 1, NOW - 10 * SEC),
	    key(1, 100, NOW - 10 * SEC, NOW - 9 * SEC),
	};
	uint32_t crc;
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		assert_int_equal(crccache_get(cc, &other[i], &crc), 0);
	crccache_free(cc);
}

/* A file changed less than CRCCACHE_SETTLE_NS before the CRC was finished may change again
 * within the same timestamp tick: not stored. */
static void test_recent_files_are_not_stored(void **state)
{
	(void)state;
	struct crccache *cc = crccache_new(16);
	struct crccache_key fresh_m = key(1, 100, NOW - SEC, NOW - 10 * SEC);
	struct crccache_key fresh_c = key(2, 100, NOW - 10 * SEC, NOW - SEC);
	struct crccache_key future = key(3, 100, NOW + SEC, NOW + SEC);
	uint32_t crc;
	crccache_put(cc, &fresh_m, 1, NOW);
	crccache_put(cc, &fresh_c, 2, NOW);
	crccache_put(cc, &future, 3, NOW);
	assert_int_equal(crccache_get(cc, &fresh_m, &crc), 0);
	assert_int_equal(crccache_get(cc, &fresh_c, &crc), 0);
	assert_int_equal(crccache_get(cc, &future, &crc), 0);
	struct crccache_key settled = key(1, 100, NOW - CRCCACHE_SETTLE_NS, NOW - CRCCACHE_SETTLE_NS);
	crccache_put(cc, &settled, 4, NOW);
	assert_int_equal(crccache_get(cc, &settled, &crc), 1);
	assert_int_equal(crc, 4);
	crccache_free(cc);
}

/* More files than entries: the table keeps its size, recently used entries survive, and a
 * re-stored key replaces its own entry. */
static void test_bounded_and_recent_survive(void **state)
{
	(void)state;
	struct crccache *cc = crccache_new(8); /* 2 sets of 4 */
	struct crccache_key hot = key(1000, 1, NOW - 10 * SEC, NOW - 10 * SEC);
	uint32_t crc;
	crccache_put(cc, &hot, 42, NOW);
	crccache_put(cc, &hot, 43, NOW);
	assert_int_equal(crccache_get(cc, &hot, &crc), 1);
	assert_int_equal(crc, 43);
	int kept = 0;
	for (uint64_t i = 0; i < 1000; i++) {
		struct crccache_key k = key(i, 1, NOW - 10 * SEC, NOW - 10 * SEC);
		crccache_put(cc, &k, (uint32_t)i, NOW);
		assert_int_equal(crccache_get(cc, &hot, &crc), 1); /* used after every store */
		assert_int_equal(crc, 43);
	}
	for (uint64_t i = 0; i < 1000; i++) {
		struct crccache_key k = key(i, 1, NOW - 10 * SEC, NOW - 10 * SEC);
		if (crccache_get(cc, &k, &crc)) {
			assert_int_equal(crc, (uint32_t)i);
			kept++;
		}
	}
	assert_true(kept > 0);
	assert_true(kept <= 7); /* 8 entries, one of them the hot key */
	crccache_free(cc);
}

static void test_off(void **state)
{
	(void)state;
	assert_null(crccache_new(0));
	struct crccache_key k = key(1, 100, NOW - 10 * SEC, NOW - 10 * SEC);
	uint32_t crc;
	crccache_put(NULL, &k, 1, NOW);
	assert_int_equal(crccache_get(NULL, &k, &crc), 0);
	uint64_t hits, misses, stores;
	crccache_counts(NULL, &hits, &misses, &stores);
	assert_int_equal(hits + misses + stores, 0);
	crccache_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_store_and_find),
	    cmocka_unit_test(test_every_field_counts),
	    cmocka_unit_test(test_recent_files_are_not_stored),
	    cmocka_unit_test(test_bounded_and_recent_survive),
	    cmocka_unit_test(test_off),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
