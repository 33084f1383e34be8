/* uri.c: URI parsing, the --allow policy and confined opens (see uri.h). */
#include "uri.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct {
	const char *name;
	enum uri_scheme scheme;
} uri_schemes[] = {
    {"file", URI_FILE}, {"direct", URI_DIRECT}, {"s3", URI_S3},
    {"az", URI_AZ},     {"gs", URI_GS},         {"gcs", URI_GS},
};

int uri_scheme_is_local(enum uri_scheme scheme)
{
	return scheme == URI_FILE || scheme == URI_DIRECT;
}

/* Copy the absolute path in src[0..n) to u->path, collapsing repeated slashes and refusing
 * "." and ".." segments (the kernel would resolve them; we never let a client say them). */
static int uri_norm_path(struct uri *u, const char *src, size_t n, struct err *e)
{
	size_t o = 0, i = 0;
	u->path[o++] = '/';
	while (i < n) {
		while (i < n && src[i] == '/')
			i++;
		size_t a = i;
		while (i < n && src[i] != '/')
			i++;
		size_t seg = i - a;
		if (seg == 0)
			break;
		if (seg == 1 && src[a] == '.')
			return err_set(e, WIRE_E_INVALID, "%s: path contains '.'", u->text);
		if (seg == 2 && src[a] == '.' && src[a + 1] == '.')
			return err_set(e, WIRE_E_INVALID, "%s: path contains '..'", u->text);
		memcpy(u->path + o, src + a, seg);
		o += seg;
		if (i < n)
			u->path[o++] = '/'; /* a slash follows: keep one */
	}
	u->path[o] = '\0';
	u->path_len = o;
	return 0;
}

/* The names that become part of a store's host or path before the key: the bucket (s3, gs),
 * the account and the container (az). They go into request URLs unescaped (an account or a
 * virtual-hosted bucket is the host itself), so a name is letters, digits, '.', '-' and '_'
 * only (an Azure account letters and digits; a container may start with '$': $root, $logs,
 * $web): otherwise a client could
 * name another host ("b:port#", "b?") and have the server send its signed request, and its
 * credentials, there. */
static int uri_name_ok(const char *p, size_t n, size_t max, int dollar, int alnum)
{
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
			continue;
		if (!alnum &&
		    (c == '-' || c == '_' || (c == '.' && i > 0) || (c == '$' && i == 0 && dollar)))
			continue;
		return 0;
	}
	return 1;
}

static int uri_check_names(struct uri *u, const char *rest, size_t rlen, struct err *e)
{
	size_t a = 0, i;
	int names = u->scheme == URI_AZ ? 2 : 1;

	for (int k = 0; k < names && a < rlen; k++) {
		for (i = a; i < rlen && rest[i] != '/'; i++)
			;
		int az = u->scheme == URI_AZ;
		size_t max = az ? (k == 0 ? 24 : 63) : (u->scheme == URI_GS ? 222 : 255);
		/* an Azure account is the first label of the host: letters and digits only */
		if (!uri_name_ok(rest + a, i - a, max, az && k == 1, az && k == 0))
			return err_set(
			    e, WIRE_E_INVALID,
			    "%s: '%.*s' is not a valid %s name (letters, digits, '.', '-', "
			    "'_'; at most %zu)",
			    u->text, (int)(i - a), rest + a,
			    az ? (k == 0 ? "storage account" : "container") : "bucket", max);
		a = i + 1;
	}
	return 0;
}

int uri_parse(const char *s, size_t len, struct uri *u, struct err *e)
{
	u->scheme = 0;
	u->scheme_name = NULL;
	u->path[0] = '\0';
	u->path_len = 0;
	if (len > WIRE_MAX_URI) {
		u->text[0] = '\0';
		return err_set(e, WIRE_E_TOO_LARGE, "URI of %zu bytes is over the %u-byte limit",
		               len, WIRE_MAX_URI);
	}
	memcpy(u->text, s, len);
	u->text[len] = '\0';
	if (len == 0)
		return err_set(e, WIRE_E_INVALID, "empty URI");
	if (memchr(s, '\0', len))
		return err_set(e, WIRE_E_INVALID, "%s...: URI contains a NUL byte", u->text);
	const char *sep = strstr(u->text, "://");
	if (!sep || sep == u->text)
		return err_set(
		    e, WIRE_E_INVALID,
		    "%s: no scheme (expected file:///path, direct:///path or s3://bucket/key)",
		    u->text);
	size_t slen = (size_t)(sep - u->text);
	for (size_t i = 0; i < sizeof(uri_schemes) / sizeof(uri_schemes[0]); i++) {
		if (strlen(uri_schemes[i].name) == slen &&
		    strncasecmp(u->text, uri_schemes[i].name, slen) == 0) {
			u->scheme = uri_schemes[i].scheme;
			u->scheme_name = uri_schemes[i].name;
		}
	}
	if (!u->scheme)
		return err_set(e, WIRE_E_UNSUPPORTED, "%s: unknown scheme '%.*s'", u->text,
		               (int)slen, u->text);
	const char *rest = sep + 3;
	size_t rlen = len - slen - 3;
	if (uri_scheme_is_local(u->scheme)) {
		if (rlen == 0)
			return err_set(e, WIRE_E_INVALID, "%s: empty path", u->text);
		if (rest[0] != '/')
			return err_set(e, WIRE_E_INVALID,
			               "%s: path must be absolute (%s:///abs/path)", u->text,
			               u->scheme_name);
		return uri_norm_path(u, rest, rlen, e);
	}
	if (rlen == 0 || rest[0] == '/')
		return err_set(e, WIRE_E_INVALID, "%s: no bucket", u->text);
	/* An object key may hold "." and ".." segments, but HTTP stacks resolve them in the
	 * request URL (libcurl does), so "b/team-a/../team-b/k" would read team-b/k past an
	 * --allow or token prefix that checked team-a/. Such keys are refused, not served. */
	for (size_t i = 0; i < rlen;) {
		size_t a = i;
		while (i < rlen && rest[i] != '/')
			i++;
		if ((i - a == 1 && rest[a] == '.') ||
		    (i - a == 2 && rest[a] == '.' && rest[a + 1] == '.'))
			return err_set(
			    e, WIRE_E_INVALID,
			    "%s: key contains a '%.*s' segment (not served: the store's URL "
			    "would name another object)",
			    u->text, (int)(i - a), rest + a);
		i++;
	}
	int rc = uri_check_names(u, rest, rlen, e);
	if (rc < 0)
		return rc;
	memcpy(u->path, rest, rlen);
	u->path[rlen] = '\0';
	u->path_len = rlen;
	return 0;
}

int uri_parse_str(const char *s, struct uri *u, struct err *e)
{
	return uri_parse(s, strlen(s), u, e);
}

void uri_policy_init(struct uri_policy *p)
{
	p->v = NULL;
	p->n = 0;
	p->no_openat2 = 0;
}

void uri_policy_free(struct uri_policy *p)
{
	for (size_t i = 0; i < p->n; i++) {
		if (p->v[i].rootfd >= 0)
			close(p->v[i].rootfd);
		free(p->v[i].text);
		free(p->v[i].prefix);
		free(p->v[i].realroot);
	}
	free(p->v);
	p->v = NULL;
	p->n = 0;
}

/* "s3://" alone (any case, gcs:// for gs://): the remote scheme whose every bucket it allows,
 * or 0. A request URI must name a bucket; an --allow prefix may stop before it. */
static enum uri_scheme uri_scheme_wide(const char *prefix)
{
	size_t n = strlen(prefix);
	if (n <= 3 || strcmp(prefix + n - 3, "://") != 0)
		return 0;
	for (size_t i = 0; i < sizeof(uri_schemes) / sizeof(uri_schemes[0]); i++)
		if (strlen(uri_schemes[i].name) == n - 3 &&
		    strncasecmp(prefix, uri_schemes[i].name, n - 3) == 0 &&
		    !uri_scheme_is_local(uri_schemes[i].scheme))
			return uri_schemes[i].scheme;
	return 0;
}

int uri_policy_add(struct uri_policy *p, const char *prefix, struct err *e)
{
	int result = -WIRE_E_INTERNAL;
	struct uri *u = malloc(sizeof(*u));
	struct uri_allow a = {.rootfd = -1};
	if (!u)
		return err_set(e, WIRE_E_INTERNAL, "--allow %s: out of memory", prefix);
	enum uri_scheme wide = uri_scheme_wide(prefix);
	if (wide) {
		/* the empty path prefix matches every bucket (MKDIR may create any) */
		a.scheme = wide;
		a.prefix = strdup("");
		a.prefix_len = 0;
		a.text = strdup(wide == URI_S3 ? "s3://" : wide == URI_AZ ? "az://" : "gs://");
		if (!a.prefix || !a.text) {
			result = err_set(e, WIRE_E_INTERNAL, "--allow %s: out of memory", prefix);
			goto done;
		}
		goto add;
	}
	result = uri_parse_str(prefix, u, e);
	if (result < 0) {
		struct err sub = *e;
		result = err_set(e, sub.code, "--allow: %s", sub.msg);
		goto done;
	}
	if (u->path[u->path_len - 1] != '/') {
		/* prefixes match whole path segments: "/data" must not allow "/database" */
		if (u->path_len >= WIRE_MAX_URI) {
			result =
			    err_set(e, WIRE_E_TOO_LARGE, "--allow %s: prefix too long", prefix);
			goto done;
		}
		u->path[u->path_len++] = '/';
		u->path[u->path_len] = '\0';
	}
	a.scheme = u->scheme;
	a.prefix = strdup(u->path);
	a.prefix_len = u->path_len;
	size_t tlen = strlen(u->scheme_name) + 3 + u->path_len + 1;
	a.text = malloc(tlen);
	if (!a.prefix || !a.text) {
		result = err_set(e, WIRE_E_INTERNAL, "--allow %s: out of memory", prefix);
		goto done;
	}
	snprintf(a.text, tlen, "%s://%s", u->scheme_name, u->path);
	if (uri_scheme_is_local(u->scheme)) {
		a.rootfd = open(u->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (a.rootfd < 0) {
			result =
			    err_set(e, err_code_from_errno(errno), "--allow %s: cannot open %s: %s",
			            a.text, u->path, strerror(errno));
			goto done;
		}
		a.realroot = realpath(u->path, NULL);
		if (!a.realroot) {
			result =
			    err_set(e, err_code_from_errno(errno), "--allow %s: realpath %s: %s",
			            a.text, u->path, strerror(errno));
			goto done;
		}
	}
add:;
	struct uri_allow *nv = realloc(p->v, (p->n + 1) * sizeof(*nv));
	if (!nv) {
		result = err_set(e, WIRE_E_INTERNAL, "--allow %s: out of memory", prefix);
		goto done;
	}
	p->v = nv;
	p->v[p->n++] = a;
	a = (struct uri_allow){.rootfd = -1}; /* now owned by the policy */
	result = 0;
done:
	if (a.rootfd >= 0)
		close(a.rootfd);
	free(a.text);
	free(a.prefix);
	free(a.realroot);
	free(u);
	return result;
}

const struct uri_allow *uri_policy_match(const struct uri_policy *p, enum uri_scheme scheme,
                                         const char *path)
{
	const struct uri_allow *best = NULL;
	size_t plen = strlen(path);
	for (size_t i = 0; i < p->n; i++) {
		const struct uri_allow *a = &p->v[i];
		if (a->scheme != scheme)
			continue;
		int hit = strncmp(path, a->prefix, a->prefix_len) == 0 ||
		          (plen + 1 == a->prefix_len && strncmp(path, a->prefix, plen) == 0);
		if (hit && (!best || a->prefix_len > best->prefix_len))
			best = a;
	}
	return best;
}

int uri_check(const struct uri_policy *p, const struct uri *u, struct err *e)
{
	if (!uri_policy_match(p, u->scheme, u->path))
		return err_set(e, WIRE_E_PERMISSION, "%s: not under any --allow prefix", u->text);
	return 0;
}

static int uri_openat2(int rootfd, const char *rel, int flags)
{
	struct open_how how;
	memset(&how, 0, sizeof(how));
	how.flags = (unsigned long long)(flags | O_CLOEXEC);
	how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
	for (int tries = 0; tries < 16; tries++) {
		long fd = syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
		if (fd >= 0)
			return (int)fd;
		/* EAGAIN: a rename or mount raced the lookup; the kernel asks us to retry */
		if (errno != EAGAIN)
			return -1;
	}
	return -1;
}

/* Without openat2: resolve every symlink and compare against the resolved root. A rename
 * between the check and the open could still escape, which is why this is only the
 * fallback. */
static int uri_open_fallback(const struct uri_allow *a, const char *rel, int flags)
{
	char full[PATH_MAX];
	int n = snprintf(full, sizeof(full), "%s/%s", a->realroot, rel);
	if (n < 0 || (size_t)n >= sizeof(full)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	char *real = realpath(full, NULL);
	if (!real)
		return -1;
	size_t rl = strlen(a->realroot);
	int under = strcmp(a->realroot, "/") == 0 ||
	            (strncmp(real, a->realroot, rl) == 0 && (real[rl] == '\0' || real[rl] == '/'));
	int fd = -1;
	if (!under)
		errno = EXDEV;
	else
		fd = open(real, flags | O_CLOEXEC | O_NOFOLLOW);
	int saved = errno;
	free(real);
	errno = saved;
	return fd;
}

static int uri_open_rel(const struct uri_policy *p, const struct uri_allow *a, const char *rel,
                        int flags)
{
	if (!*rel)
		rel = ".";
	if (!p->no_openat2) {
		int fd = uri_openat2(a->rootfd, rel, flags);
		if (fd >= 0 || errno != ENOSYS)
			return fd;
	}
	return uri_open_fallback(a, rel, flags);
}

static int uri_open_errno(struct err *e, const struct uri *u, int errnum)
{
	if (errnum == EXDEV)
		return err_set(e, WIRE_E_PERMISSION, "%s: escapes the allowed root", u->text);
	if (errnum == ELOOP)
		return err_set(e, WIRE_E_PERMISSION,
		               "%s: refused symbolic link (a loop or a /proc magic link)", u->text);
	return err_errno(e, u->text, errnum);
}

/* The path of `path` relative to its allow root ("" for the root itself). */
static const char *uri_rel(const struct uri_allow *a, const char *path)
{
	size_t plen = strlen(path);
	return plen >= a->prefix_len ? path + a->prefix_len : path + plen;
}

int uri_open(const struct uri_policy *p, const struct uri *u, const char *path, int flags, int *fd,
             struct err *e)
{
	*fd = -1;
	if (!uri_scheme_is_local(u->scheme) || (flags & O_CREAT))
		return err_set(e, WIRE_E_INTERNAL, "%s: uri_open misused", u->text);
	const struct uri_allow *a = uri_policy_match(p, u->scheme, path);
	if (!a)
		return err_set(e, WIRE_E_PERMISSION, "%s: not under any --allow prefix", u->text);
	int f = uri_open_rel(p, a, uri_rel(a, path), flags);
	if (f < 0)
		return uri_open_errno(e, u, errno);
	*fd = f;
	return 0;
}

/* Create the missing directories of rel (relative to a's root), one segment at a time:
 * each mkdirat() is relative to a directory we opened beneath the root, so a symlink
 * planted along the way cannot redirect the creation outside it. On failure errno says why
 * and *stop (when not NULL) is the length of the prefix of rel that could not be opened or
 * made. */
static int uri_mkdirs(const struct uri_policy *p, const struct uri_allow *a, const char *rel,
                      size_t *stop)
{
	char part[WIRE_MAX_URI + 1];
	size_t n = strlen(rel);
	if (stop)
		*stop = 0;
	if (n >= sizeof(part)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int cur = uri_open_rel(p, a, "", O_RDONLY | O_DIRECTORY);
	size_t i = 0;
	while (cur >= 0 && i < n) {
		size_t j = i;
		while (j < n && rel[j] != '/')
			j++;
		memcpy(part, rel, j);
		part[j] = '\0';
		int next = uri_open_rel(p, a, part, O_RDONLY | O_DIRECTORY);
		if (next < 0 && errno == ENOENT) {
			if (mkdirat(cur, part + i, 0777) < 0 && errno != EEXIST)
				next = -1;
			else
				next = uri_open_rel(p, a, part, O_RDONLY | O_DIRECTORY);
		}
		int saved = errno;
		close(cur);
		errno = saved;
		if (next < 0 && stop)
			*stop = j;
		cur = next;
		i = j + 1;
	}
	return cur;
}

int uri_mkdir(const struct uri_policy *p, const struct uri *u, struct err *e)
{
	char rel[WIRE_MAX_URI + 1];
	if (!uri_scheme_is_local(u->scheme))
		return err_set(e, WIRE_E_INTERNAL, "%s: uri_mkdir misused", u->text);
	const struct uri_allow *a = uri_policy_match(p, u->scheme, u->path);
	if (!a)
		return err_set(e, WIRE_E_PERMISSION, "%s: not under any --allow prefix", u->text);
	size_t n = strlen(uri_rel(a, u->path));
	memcpy(rel, uri_rel(a, u->path), n + 1);
	if (n && rel[n - 1] == '/')
		rel[--n] = '\0'; /* "a/b/" and "a/b" name the same directory */
	size_t stop = 0;
	int fd = uri_mkdirs(p, a, rel, &stop);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	/* ENOTDIR: the open of that prefix met something that is not a directory (EEXIST can
	 * only be a lost race with a rename, read the same way) */
	if (errno == ENOTDIR || errno == EEXIST)
		return err_set(e, WIRE_E_INVALID, "%s: %.*s%.*s exists and is not a directory",
		               u->text, (int)a->prefix_len, a->prefix, (int)stop, rel);
	return uri_open_errno(e, u, errno);
}

int uri_open_parent(const struct uri_policy *p, const struct uri *u, int create, int *dirfd,
                    const char **base, struct err *e)
{
	char dir[WIRE_MAX_URI + 1];
	*dirfd = -1;
	*base = NULL;
	if (!uri_scheme_is_local(u->scheme))
		return err_set(e, WIRE_E_INTERNAL, "%s: uri_open_parent misused", u->text);
	const struct uri_allow *a = uri_policy_match(p, u->scheme, u->path);
	if (!a)
		return err_set(e, WIRE_E_PERMISSION, "%s: not under any --allow prefix", u->text);
	if (u->path_len <= a->prefix_len || u->path[u->path_len - 1] == '/')
		return err_set(e, WIRE_E_INVALID, "%s: names a directory, not an object", u->text);
	const char *rel = u->path + a->prefix_len;
	const char *slash = strrchr(rel, '/');
	*base = slash ? slash + 1 : rel;
	size_t dlen = slash ? (size_t)(slash - rel) : 0;
	memcpy(dir, rel, dlen);
	dir[dlen] = '\0';
	int fd = uri_open_rel(p, a, dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0 && errno == ENOENT && create)
		fd = uri_mkdirs(p, a, dir, NULL);
	if (fd < 0)
		return uri_open_errno(e, u, errno);
	*dirfd = fd;
	return 0;
}
