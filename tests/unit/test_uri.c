/* test_uri.c: URI parsing, --allow matching and confined opens (server/uri.c).
 *
 * The confinement tests build a small tree in a temporary directory:
 *   T/data/            the allowed root
 *   T/data/sub/real.txt
 *   T/data/in.txt      -> sub/real.txt            (stays inside: fine)
 *   T/data/out.txt     -> ../outside/secret.txt   (escapes: refused)
 *   T/data/abs.txt     -> T/outside/secret.txt    (absolute, escapes: refused)
 *   T/data/evil        -> ../outside              (directory link out of the root)
 *   T/database/        a sibling sharing the root's name as a string prefix
 *   T/outside/secret.txt
 * and run each check with openat2 and with the realpath fallback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uri.h"

struct tree {
	char root[256];
	struct uri_policy pol;
};

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void path_of(char *out, size_t cap, const struct tree *t, const char *rel)
{
	snprintf(out, cap, "%s/%s", t->root, rel);
}

static void uri_of(char *out, size_t cap, const struct tree *t, const char *scheme, const char *rel)
{
	snprintf(out, cap, "%s://%s/%s", scheme, t->root, rel);
}

static int tree_setup(void **state)
{
	struct tree *t = calloc(1, sizeof(*t));
	char p[512], q[512];
	snprintf(t->root, sizeof(t->root), "/tmp/s3dlio-test-uri-XXXXXX");
	if (!mkdtemp(t->root))
		return -1;
	path_of(p, sizeof(p), t, "data");
	mkdir(p, 0755);
	path_of(p, sizeof(p), t, "data/sub");
	mkdir(p, 0755);
	path_of(p, sizeof(p), t, "database");
	mkdir(p, 0755);
	path_of(p, sizeof(p), t, "outside");
	mkdir(p, 0755);
	path_of(p, sizeof(p), t, "data/sub/real.txt");
	write_file(p, "inside");
	path_of(p, sizeof(p), t, "outside/secret.txt");
	write_file(p, "secret");
	path_of(p, sizeof(p), t, "data/in.txt");
	if (symlink("sub/real.txt", p) < 0)
		return -1;
	path_of(p, sizeof(p), t, "data/out.txt");
	if (symlink("../outside/secret.txt", p) < 0)
		return -1;
	path_of(p, sizeof(p), t, "data/abs.txt");
	path_of(q, sizeof(q), t, "outside/secret.txt");
	if (symlink(q, p) < 0)
		return -1;
	path_of(p, sizeof(p), t, "data/evil");
	if (symlink("../outside", p) < 0)
		return -1;
	uri_policy_init(&t->pol);
	struct err e;
	uri_of(p, sizeof(p), t, "file", "data"); /* no trailing slash: it gets one */
	if (uri_policy_add(&t->pol, p, &e) < 0)
		return -1;
	uri_of(p, sizeof(p), t, "file", "data/sub/");
	if (uri_policy_add(&t->pol, p, &e) < 0)
		return -1;
	*state = t;
	return 0;
}

static int tree_teardown(void **state)
{
	struct tree *t = *state;
	uri_policy_free(&t->pol);
	nftw(t->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(t);
	return 0;
}

/* ---- parsing ---- */

static void test_parse_ok(void **state)
{
	(void)state;
	struct uri u;
	struct err e;
	assert_int_equal(uri_parse_str("file:///data/x.bin", &u, &e), 0);
	assert_int_equal(u.scheme, URI_FILE);
	assert_string_equal(u.scheme_name, "file");
	assert_string_equal(u.path, "/data/x.bin");

	assert_int_equal(uri_parse_str("direct:///a//b///c/", &u, &e), 0);
	assert_int_equal(u.scheme, URI_DIRECT);
	assert_string_equal(u.path, "/a/b/c/"); /* collapsed, trailing slash kept */

	assert_int_equal(uri_parse_str("FILE:///x", &u, &e), 0);
	assert_string_equal(u.scheme_name, "file");

	assert_int_equal(uri_parse_str("file:///", &u, &e), 0);
	assert_string_equal(u.path, "/");

	assert_int_equal(uri_parse_str("file:///a/..b/c..", &u, &e), 0); /* dots inside names */
	assert_string_equal(u.path, "/a/..b/c..");

	assert_int_equal(uri_parse_str("s3://bucket/some/key", &u, &e), 0);
	assert_int_equal(u.scheme, URI_S3);
	assert_string_equal(u.path, "bucket/some/key");

	assert_int_equal(uri_parse_str("gcs://b/k", &u, &e), 0);
	assert_int_equal(u.scheme, URI_GS);
	assert_string_equal(u.scheme_name, "gcs");

	/* not NUL-terminated input: only len bytes count */
	assert_int_equal(uri_parse("file:///abcdef", 11, &u, &e), 0);
	assert_string_equal(u.path, "/abc");
}

static void expect_parse_error(const char *s, size_t len, uint32_t code, const char *needle)
{
	struct uri u;
	struct err e;
	int rc = uri_parse(s, len, &u, &e);
	assert_int_equal(rc, -(int)code);
	assert_int_equal(e.code, code);
	if (needle && !strstr(e.msg, needle))
		fail_msg("message '%s' lacks '%s'", e.msg, needle);
}

static void test_parse_errors(void **state)
{
	(void)state;
	expect_parse_error("", 0, WIRE_E_INVALID, "empty");
	expect_parse_error("/data/x", 7, WIRE_E_INVALID, "no scheme");
	expect_parse_error("://x", 4, WIRE_E_INVALID, "no scheme");
	expect_parse_error("file://", 7, WIRE_E_INVALID, "empty path");
	expect_parse_error("file://data/x", 13, WIRE_E_INVALID, "absolute");
	expect_parse_error("file:///data/../etc", 19, WIRE_E_INVALID,
	                   "file:///data/../etc: path contains '..'");
	expect_parse_error("file:///data/..", 15, WIRE_E_INVALID, "'..'");
	expect_parse_error("file:///../x", 12, WIRE_E_INVALID, "'..'");
	expect_parse_error("direct:///a/./b", 15, WIRE_E_INVALID, "'.'");
	expect_parse_error("file:///a\0b", 11, WIRE_E_INVALID, "NUL");
	expect_parse_error("http://host/x", 13, WIRE_E_UNSUPPORTED, "unknown scheme 'http'");
	expect_parse_error("s3://", 5, WIRE_E_INVALID, "no bucket");
	expect_parse_error("s3:///key", 9, WIRE_E_INVALID, "no bucket");

	char *big = malloc(WIRE_MAX_URI + 16);
	memcpy(big, "file:///", 8);
	memset(big + 8, 'a', WIRE_MAX_URI + 8);
	expect_parse_error(big, WIRE_MAX_URI + 16, WIRE_E_TOO_LARGE, "limit");
	free(big);
}

/* Bucket, account and container names reach the store's URL (an account, or a
 * virtual-hosted bucket, is the host): a name that could point elsewhere is refused. */
static void expect_bad_name(const char *s, const char *needle)
{
	expect_parse_error(s, strlen(s), WIRE_E_INVALID, needle);
}

static void test_parse_store_names(void **state)
{
	struct uri u;
	struct err e;

	(void)state;
	expect_bad_name("s3://127.0.0.1:8080#/key", "not a valid bucket name");
	expect_bad_name("s3://evil?/key", "not a valid bucket name");
	expect_bad_name("s3://a@b/key", "bucket");
	expect_bad_name("s3://a%2fb/key", "bucket");
	expect_bad_name("s3://.hidden/key", "bucket");
	expect_bad_name("gs://b#x/o", "bucket");
	expect_bad_name("az://evil.example:443/c/blob", "storage account");
	expect_bad_name("az://account/c?sv=x/blob", "container");
	expect_bad_name("az://waytoolongaccountname123456/c/b", "storage account");
	expect_bad_name("az://evil.example/c/b", "storage account");
	/* names of real stores and emulators are fine */
	const char *ok[] = {"s3://my-bucket.v2/k",
	                    "s3://Legacy_Bucket/k",
	                    "gs://a.b-c_d/o",
	                    "az://devstoreaccount1/container-1/x/y",
	                    "az://acct/$root/blob",
	                    "s3://b",
	                    "az://acct"};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (uri_parse_str(ok[i], &u, &e) != 0)
			fail_msg("%s refused: %s", ok[i], e.msg);
}

/* ---- allow matching ---- */

static void test_allow_matching(void **state)
{
	struct tree *t = *state;
	char p[512];
	const struct uri_allow *a;

	path_of(p, sizeof(p), t, "data/x.bin");
	a = uri_policy_match(&t->pol, URI_FILE, p);
	assert_non_null(a);
	assert_true(strstr(a->text, "/data/") != NULL);
	assert_int_equal(a->text[strlen(a->text) - 1], '/');

	/* the root itself, with or without its slash */
	path_of(p, sizeof(p), t, "data");
	assert_ptr_equal(uri_policy_match(&t->pol, URI_FILE, p), a);
	path_of(p, sizeof(p), t, "data/");
	assert_ptr_equal(uri_policy_match(&t->pol, URI_FILE, p), a);

	/* segments, not string prefixes */
	path_of(p, sizeof(p), t, "database/x");
	assert_null(uri_policy_match(&t->pol, URI_FILE, p));
	path_of(p, sizeof(p), t, "dat");
	assert_null(uri_policy_match(&t->pol, URI_FILE, p));

	/* the longest prefix wins */
	path_of(p, sizeof(p), t, "data/sub/real.txt");
	const struct uri_allow *b = uri_policy_match(&t->pol, URI_FILE, p);
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	assert_true(strstr(b->text, "/data/sub/") != NULL);

	/* schemes are allowed separately */
	path_of(p, sizeof(p), t, "data/x.bin");
	assert_null(uri_policy_match(&t->pol, URI_DIRECT, p));

	struct uri u;
	struct err e;
	uri_of(p, sizeof(p), t, "file", "database/x");
	assert_int_equal(uri_parse_str(p, &u, &e), 0);
	assert_int_equal(uri_check(&t->pol, &u, &e), -WIRE_E_PERMISSION);
	assert_non_null(strstr(e.msg, "not under any --allow prefix"));
	assert_non_null(strstr(e.msg, p));
	uri_of(p, sizeof(p), t, "file", "data/anything");
	assert_int_equal(uri_parse_str(p, &u, &e), 0);
	assert_int_equal(uri_check(&t->pol, &u, &e), 0);
}

static void test_allow_everything_and_nothing(void **state)
{
	(void)state;
	struct uri_policy pol;
	struct err e;
	uri_policy_init(&pol);
	assert_null(uri_policy_match(&pol, URI_FILE, "/etc/passwd")); /* no --allow at all */
	assert_int_equal(uri_policy_add(&pol, "file:///", &e), 0);
	assert_non_null(uri_policy_match(&pol, URI_FILE, "/etc/passwd"));
	assert_non_null(uri_policy_match(&pol, URI_FILE, "/"));
	assert_int_equal(uri_policy_add(&pol, "s3://bucket", &e), 0);
	assert_non_null(uri_policy_match(&pol, URI_S3, "bucket/k"));
	assert_null(uri_policy_match(&pol, URI_S3, "bucket2/k"));
	/* a remote scheme alone: every bucket of it, and only of it; the longest prefix still
	 * wins */
	assert_null(uri_policy_match(&pol, URI_GS, "any/k"));
	assert_int_equal(uri_policy_add(&pol, "GCS://", &e), 0);
	const struct uri_allow *gs = uri_policy_match(&pol, URI_GS, "any/k");
	assert_non_null(gs);
	assert_string_equal(gs->text, "gs://");
	assert_non_null(uri_policy_match(&pol, URI_GS, "other"));
	assert_null(uri_policy_match(&pol, URI_AZ, "acct/c/k"));
	assert_int_equal(uri_policy_add(&pol, "s3://", &e), 0);
	assert_non_null(uri_policy_match(&pol, URI_S3, "bucket2/k"));
	assert_string_equal(uri_policy_match(&pol, URI_S3, "bucket/k")->text, "s3://bucket/");
	/* but not a local scheme: its root is a path */
	assert_true(uri_policy_add(&pol, "direct://", &e) < 0);
	/* a root that does not exist is refused at startup */
	assert_true(uri_policy_add(&pol, "file:///no/such/dir/s3dlio-test", &e) < 0);
	assert_non_null(strstr(e.msg, "No such file or directory"));
	assert_true(uri_policy_add(&pol, "file:///a/../b", &e) < 0);
	assert_non_null(strstr(e.msg, "'..'"));
	uri_policy_free(&pol);
}

/* ---- confinement ---- */

static int open_rel(struct tree *t, const char *rel, int *fd, struct err *e)
{
	char s[512];
	struct uri u;
	uri_of(s, sizeof(s), t, "file", rel);
	assert_int_equal(uri_parse_str(s, &u, e), 0);
	return uri_open(&t->pol, &u, u.path, O_RDONLY, fd, e);
}

static void check_confinement(struct tree *t)
{
	int fd;
	struct err e;
	char buf[16] = {0};

	/* a symlink that stays inside the root is fine */
	assert_int_equal(open_rel(t, "data/in.txt", &fd, &e), 0);
	assert_int_equal(read(fd, buf, sizeof(buf) - 1), 6);
	assert_string_equal(buf, "inside");
	close(fd);

	/* relative and absolute links out of the root are refused */
	assert_int_equal(open_rel(t, "data/out.txt", &fd, &e), -WIRE_E_PERMISSION);
	assert_non_null(strstr(e.msg, "escapes the allowed root"));
	assert_int_equal(fd, -1);
	assert_int_equal(open_rel(t, "data/abs.txt", &fd, &e), -WIRE_E_PERMISSION);
	assert_non_null(strstr(e.msg, "escapes the allowed root"));
	assert_int_equal(open_rel(t, "data/evil/secret.txt", &fd, &e), -WIRE_E_PERMISSION);
	assert_non_null(strstr(e.msg, "data/evil/secret.txt: escapes the allowed root"));

	/* a missing file is NOT_FOUND with the errno text */
	assert_int_equal(open_rel(t, "data/missing.bin", &fd, &e), -WIRE_E_NOT_FOUND);
	assert_non_null(strstr(e.msg, "data/missing.bin: No such file or directory"));

	/* outside every prefix */
	assert_int_equal(open_rel(t, "outside/secret.txt", &fd, &e), -WIRE_E_PERMISSION);
	assert_non_null(strstr(e.msg, "not under any --allow prefix"));

	/* the root directory itself opens */
	char s[512];
	struct uri u;
	uri_of(s, sizeof(s), t, "file", "data/");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_open(&t->pol, &u, u.path, O_RDONLY | O_DIRECTORY, &fd, &e), 0);
	close(fd);
}

static void test_confinement_openat2(void **state)
{
	struct tree *t = *state;
	t->pol.no_openat2 = 0;
	check_confinement(t);
}

static void test_confinement_fallback(void **state)
{
	struct tree *t = *state;
	t->pol.no_openat2 = 1;
	check_confinement(t);
	t->pol.no_openat2 = 0;
}

static void check_open_parent(struct tree *t, const char *tag)
{
	char s[1200], p[512];
	struct uri u;
	struct err e;
	int fd;
	const char *base;

	/* missing directories are created beneath the root */
	snprintf(p, sizeof(p), "data/new-%s/deep/x.bin", tag);
	uri_of(s, sizeof(s), t, "file", p);
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_open_parent(&t->pol, &u, 0, &fd, &base, &e), -WIRE_E_NOT_FOUND);
	assert_int_equal(uri_open_parent(&t->pol, &u, 1, &fd, &base, &e), 0);
	assert_string_equal(base, "x.bin");
	close(fd);
	snprintf(p, sizeof(p), "%s/data/new-%s/deep", t->root, tag);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	/* but never through a link that leads out of it */
	snprintf(p, sizeof(p), "data/evil/made-%s/x.bin", tag);
	uri_of(s, sizeof(s), t, "file", p);
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_open_parent(&t->pol, &u, 1, &fd, &base, &e), -WIRE_E_PERMISSION);
	snprintf(p, sizeof(p), "%s/outside/made-%s", t->root, tag);
	assert_int_equal(stat(p, &st), -1);

	/* a directory is no object */
	uri_of(s, sizeof(s), t, "file", "data/sub/");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_open_parent(&t->pol, &u, 1, &fd, &base, &e), -WIRE_E_INVALID);
	uri_of(s, sizeof(s), t, "file", "data");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_open_parent(&t->pol, &u, 1, &fd, &base, &e), -WIRE_E_INVALID);
}

static void test_open_parent(void **state)
{
	struct tree *t = *state;
	check_open_parent(t, "a");
	t->pol.no_openat2 = 1;
	check_open_parent(t, "b");
	t->pol.no_openat2 = 0;
}

/* MKDIR's mkdir -p: made beneath the root, idempotent, never through a link out of it, and
 * a file in the way named in the message. */
static void check_mkdir(struct tree *t, const char *tag)
{
	char s[1200], p[512];
	struct uri u;
	struct err e;
	struct stat st;

	snprintf(p, sizeof(p), "data/mk-%s/a/b/", tag);
	uri_of(s, sizeof(s), t, "file", p);
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), 0); /* exists: fine */
	snprintf(p, sizeof(p), "%s/data/mk-%s/a/b", t->root, tag);
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	/* the root itself, and a link inside the root to a directory */
	uri_of(s, sizeof(s), t, "file", "data");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), 0);

	/* a link out of the root: refused, nothing made outside */
	snprintf(p, sizeof(p), "data/evil/mk-%s", tag);
	uri_of(s, sizeof(s), t, "file", p);
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), -WIRE_E_PERMISSION);
	snprintf(p, sizeof(p), "%s/outside/mk-%s", t->root, tag);
	assert_int_equal(stat(p, &st), -1);

	/* a file in the way (through a link that stays inside, too) */
	uri_of(s, sizeof(s), t, "file", "data/sub/real.txt/deeper");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), -WIRE_E_INVALID);
	assert_non_null(strstr(e.msg, "/data/sub/real.txt exists and is not a directory"));
	uri_of(s, sizeof(s), t, "file", "data/in.txt");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), -WIRE_E_INVALID);
	assert_non_null(strstr(e.msg, "/data/in.txt exists and is not a directory"));

	/* outside every prefix */
	uri_of(s, sizeof(s), t, "file", "database/x");
	assert_int_equal(uri_parse_str(s, &u, &e), 0);
	assert_int_equal(uri_mkdir(&t->pol, &u, &e), -WIRE_E_PERMISSION);
	snprintf(p, sizeof(p), "%s/database/x", t->root);
	assert_int_equal(stat(p, &st), -1);
}

static void test_mkdir(void **state)
{
	struct tree *t = *state;
	check_mkdir(t, "a");
	t->pol.no_openat2 = 1;
	check_mkdir(t, "b");
	t->pol.no_openat2 = 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_ok),
	    cmocka_unit_test(test_parse_errors),
	    cmocka_unit_test(test_parse_store_names),
	    cmocka_unit_test(test_allow_everything_and_nothing),
	    cmocka_unit_test_setup_teardown(test_allow_matching, tree_setup, tree_teardown),
	    cmocka_unit_test_setup_teardown(test_confinement_openat2, tree_setup, tree_teardown),
	    cmocka_unit_test_setup_teardown(test_confinement_fallback, tree_setup, tree_teardown),
	    cmocka_unit_test_setup_teardown(test_open_parent, tree_setup, tree_teardown),
	    cmocka_unit_test_setup_teardown(test_mkdir, tree_setup, tree_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
