/* uri.h: object URIs, the --allow policy, and opening local paths confined to their root.
 *
 * A URI is "scheme://rest". file:// and direct:// carry an absolute path (file:///a/b);
 * s3://, az://, gs:// and gcs:// carry "bucket/key" (parsed, served by later backends).
 * Paths are checked here once: no NUL bytes, no "." or ".." segments; repeated slashes are
 * collapsed; a trailing slash is kept (it matters to LIST).
 *
 * The policy is the list of --allow prefixes. The longest matching prefix decides; its
 * root directory is opened once, and every local open resolves beneath that descriptor
 * with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so a symlink leading out of the
 * root is refused by the kernel rather than by string checks. Kernels without openat2 get
 * a realpath() check instead (racy, hence only a fallback). */
#ifndef S3DLIOD_URI_H
#define S3DLIOD_URI_H

#include <stddef.h>
#include <sys/types.h>

#include "err.h"
#include "wire.h"

enum uri_scheme {
	URI_FILE = 1,
	URI_DIRECT,
	URI_S3,
	URI_AZ,
	URI_GS,
};

struct uri {
	enum uri_scheme scheme;
	const char *scheme_name;     /* as written in URIs we return: "file", "gcs", ... */
	char text[WIRE_MAX_URI + 1]; /* the URI as the client sent it, for messages */
	char path[WIRE_MAX_URI + 1]; /* local: normalised absolute path; else "bucket/key" */
	size_t path_len;
};

/* Parse s[0..len) (not NUL-terminated). INVALID for a missing scheme, an empty or relative
 * path, NUL bytes, "." or ".." segments; UNSUPPORTED for an unknown scheme. */
int uri_parse(const char *s, size_t len, struct uri *u, struct err *e);
int uri_parse_str(const char *s, struct uri *u, struct err *e);

/* file:// and direct:// name local paths. */
int uri_scheme_is_local(enum uri_scheme scheme);

struct uri_allow {
	enum uri_scheme scheme;
	char *text;   /* the prefix as configured, trailing slash added */
	char *prefix; /* its path part, ending in '/' */
	size_t prefix_len;
	int rootfd;     /* local: O_PATH|O_DIRECTORY descriptor of the root; else -1 */
	char *realroot; /* local: realpath of the root, for the fallback check */
};

struct uri_policy {
	struct uri_allow *v;
	size_t n;
	int no_openat2; /* use the realpath fallback even where openat2 exists (tests) */
};

void uri_policy_init(struct uri_policy *p);
void uri_policy_free(struct uri_policy *p);

/* Add an --allow prefix ("file:///data" becomes "file:///data/"). A remote scheme alone
 * ("s3://", "az://", "gs://") allows every bucket of it. A local root that cannot be opened
 * is an error. */
int uri_policy_add(struct uri_policy *p, const char *prefix, struct err *e);

/* The entry with the longest prefix covering path under scheme, or NULL. The root itself
 * is covered with or without its trailing slash. */
const struct uri_allow *uri_policy_match(const struct uri_policy *p, enum uri_scheme scheme,
                                         const char *path);

/* PERMISSION unless u is covered by some --allow prefix. */
int uri_check(const struct uri_policy *p, const struct uri *u, struct err *e);

/* Open the local path (absolute, normalised; u->path or one derived from it, such as a LIST
 * directory) beneath the root of its --allow entry. flags must not hold O_CREAT. Messages
 * name u->text. */
int uri_open(const struct uri_policy *p, const struct uri *u, const char *path, int flags, int *fd,
             struct err *e);

/* Open (O_RDONLY|O_DIRECTORY) the directory that holds u->path, creating missing
 * directories beneath the root when create is set. *base points at the last segment of
 * u->path. INVALID when u->path names a directory (trailing slash or the root itself). */
int uri_open_parent(const struct uri_policy *p, const struct uri *u, int create, int *dirfd,
                    const char **base, struct err *e);

/* mkdir -p of the directory u->path names (with or without a trailing slash) beneath the
 * root of its --allow entry: each missing segment is made with mkdirat() relative to its
 * parent, itself opened beneath the root. An existing directory (the root too) is success;
 * a segment that exists and is not a directory is INVALID naming it; a symlink that leads
 * out of the root is PERMISSION. */
int uri_mkdir(const struct uri_policy *p, const struct uri *u, struct err *e);

#endif
