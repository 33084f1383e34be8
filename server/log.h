/* log.h: one-line key=value (or JSON, --log-format json) logging to stderr.
 *
 * Every line is "s3dliod: level=LEVEL key=value ..." and is written with a single write(2)
 * so lines from different threads do not interleave. The level lives in a struct log that
 * the server owns and passes down (no global state). */
#ifndef S3DLIOD_LOG_H
#define S3DLIOD_LOG_H

#include <stdatomic.h>
#include <stddef.h>

enum log_level { LOGL_ERROR = 0, LOGL_WARN = 1, LOGL_INFO = 2, LOGL_DEBUG = 3 };

struct log {
	atomic_int level; /* lines above this level are dropped; SIGHUP may change it */
	int json;         /* --log-format json: one JSON object per line instead of key=value */
};

/* fmt gives the key=value part after "level=...". */
void log_write(const struct log *lg, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The key=value text kv (values bare or quoted as log_value makes them) as one JSON object
 * {"ts":"<UTC time>","level":"...","key":"value",...} in out (cap bytes, NUL-terminated);
 * digits-only values become numbers. Returns the length. */
size_t log_kv_to_json(const char *kv, int level, char *out, size_t cap);

/* Parse "error", "warn", "info" or "debug"; 0 or -1. */
int log_level_parse(const char *s, int *level);
const char *log_level_str(int level);

/* s as a log value: quoted with \" \\ \n escapes when force is set or s holds spaces,
 * quotes, '=' or control bytes; cut to fit cap. Returns buf. */
const char *log_value(char *buf, size_t cap, const char *s, int force);

/* Route libevent's own warnings through our format. */
void log_hook_libevent(void);

#endif
