/* config.c: command line and config file parsing (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "crccache.h"
#include "log.h"

void config_init(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->max_in_flight = 256;
	c->direct_threads = 2;
	c->crc_cache = CRCCACHE_DEFAULT_ENTRIES;
	c->max_frame = WIRE_DEFAULT_FRAME;
	c->idle_timeout = 300;
	c->drain_timeout = 30;
	c->log_level = LOGL_INFO;
	c->multipart_threshold = 64ull << 20;
	c->part_size = 16ull << 20;
	c->parts_in_flight = 4;
	c->connect_timeout_ms = 10000;
	c->op_timeout_ms = 300000;
	c->retries = 4;
	c->retry_base_ms = 200;
	c->s3_path_style = -1;
	c->cache_validate_ms = 10000;
}

static void config_free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void config_free(struct config *c)
{
	config_free_list(c->listen, c->nlisten);
	config_free_list(c->allow, c->nallow);
	c->listen = c->allow = NULL;
	c->nlisten = c->nallow = 0;
	char **strs[] = {
	    &c->metrics,          &c->token_file,    &c->config_file,      &c->tls_cert,
	    &c->tls_key,          &c->tls_client_ca, &c->cache_dir,        &c->s3_endpoint,
	    &c->s3_region,        &c->s3_profile,    &c->s3_access_key_id, &c->s3_secret_access_key,
	    &c->s3_session_token, &c->az_endpoint,   &c->az_account,       &c->az_key,
	    &c->az_sas_token,     &c->gs_endpoint,   &c->gs_token,         &c->gs_credentials};
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		free(*strs[i]);
		*strs[i] = NULL;
	}
}

/* Seconds with up to three decimals, as milliseconds. */
static int config_seconds_ms(const char *s, long long max_s, int *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-' || *s == '+' || isspace((unsigned char)*s))
		return -1;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < 0 || v > (double)max_s)
		return -1;
	*out = (int)(v * 1000.0 + 0.5);
	return 0;
}

static int config_str(char **slot, const char *val)
{
	char *v = strdup(val);
	if (!v)
		return -1;
	free(*slot);
	*slot = v;
	return 0;
}

void config_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: s3dliod [options]\n"
	    "\n"
	    "Serve object bytes (file://, direct://, s3://, az://, gs://) to s3dlio clients.\n"
	    "\n"
	    "  --listen URL          tcp://HOST:PORT or unix:///PATH; repeatable\n"
	    "                        (default " CONFIG_DEFAULT_LISTEN "; port 0 picks one)\n"
	    "  --allow PREFIX        serve URIs under PREFIX, e.g. file:///data/; repeatable;\n"
	    "                        with none, every request is refused\n"
	    "  --threads N           event loop threads (default: number of cores)\n"
	    "  --direct-threads N    threads doing direct:// (O_DIRECT) reads off the event\n"
	    "                        loops, shared by all of them (default 2)\n"
	    "  --config FILE         'key = value' lines with these option names\n"
	    "  --max-in-flight N     requests per connection before BUSY (default 256)\n"
	    "  --max-frame BYTES     DATA frame payload size (default 4M; k/m suffixes)\n"
	    "  --crc-cache N         remember the CRC32C of up to N whole local files, keyed by\n"
	    "                        inode, size, mtime and ctime (default 65536; 0: off)\n"
	    "  --idle-timeout SECS   close idle connections after SECS (default 300; 0: never)\n"
	    "  --drain-timeout SECS  on SIGTERM, wait this long for requests (default 30)\n"
	    "  --log-level LEVEL     error, warn, info or debug (default info)\n"
	    "  --log-format kv|json  one line per event: key=value pairs (default) or a JSON\n"
	    "                        object with ts (UTC), level and the same keys\n"
	    "  --parent-pid PID      stop (as on SIGTERM) when process PID is gone\n"
	    "  --metrics URL         serve Prometheus /metrics, /healthz and /readyz on\n"
	    "                        tcp://HOST:PORT (port 0 picks one)\n"
	    "  --token-file FILE     bearer tokens, one per line:\n"
	    "                          TOKEN NAME ro|rw PREFIX[,PREFIX...] [max-conns=N]\n"
	    "                          [max-in-flight=N] [max-bytes-per-sec=BYTES]\n"
	    "                        every client must present one; without this option only\n"
	    "                        Unix-socket and loopback clients are served. SIGHUP\n"
	    "                        reads the file (and --config's log-level) again\n"
	    "  --tls-cert FILE       PEM certificate (chain): tcp:// listeners speak TLS 1.2+\n"
	    "  --tls-key FILE        its PEM private key (required with --tls-cert)\n"
	    "  --tls-client-ca FILE  require client certificates signed by these PEM CAs\n"
	    "\n"
	    "Object cache (s3://, az://, gs:// GETs; concurrent misses of one object share one\n"
	    "backend read):\n"
	    "  --cache-mem BYTES     memory budget of the cache (default 0: no cache; k/m/g)\n"
	    "  --cache-max-object BYTES  larger objects are not cached (default cache-mem/8)\n"
	    "  --cache-validate SECS serve a cached object without asking the backend for\n"
	    "                        SECS after it was fetched or validated; then one HEAD\n"
	    "                        compares the etag (default 10; 0: on every GET)\n"
	    "  --cache-dir DIR       a disk tier (local NVMe) for objects evicted from memory;\n"
	    "                        its *.obj files are removed at start and at exit\n"
	    "  --cache-disk BYTES    the disk tier's budget (required with --cache-dir)\n"
	    "\n"
	    "Remote backends (s3://, az://, gs://; credentials also from the usual environment "
	    "variables):\n"
	    "  --multipart-threshold BYTES  uploads above this go in parts (default 64M)\n"
	    "  --part-size BYTES     upload part size (default 16M)\n"
	    "  --parts-in-flight N   parts uploaded in parallel per upload (default 4)\n"
	    "  --list-page-size N    entries per LIST page asked of the store (default 1000)\n"
	    "  --connect-timeout SECS  (default 10)\n"
	    "  --op-timeout SECS     a whole request, streamed GET bodies aside (default 300)\n"
	    "  --retries N           retries of connection errors, 429, 5xx (default 4)\n"
	    "  --retry-base-ms MS    first backoff; doubles up to 32x, jittered (default 200)\n"
	    "  --s3-endpoint URL     (AWS_ENDPOINT_URL) an S3-compatible store\n"
	    "  --s3-region REGION    (AWS_REGION, AWS_DEFAULT_REGION; default us-east-1)\n"
	    "  --s3-profile NAME     (AWS_PROFILE) a ~/.aws/credentials profile\n"
	    "  --s3-access-key-id ID, --s3-secret-access-key KEY, --s3-session-token TOKEN\n"
	    "  --s3-path-style 0|1   (default: 1 with an endpoint, else 0)\n"
	    "  --az-endpoint URL     (AZURE_STORAGE_ENDPOINT) e.g. "
	    "http://127.0.0.1:10000/devstoreaccount1\n"
	    "  --az-account NAME, --az-key BASE64, --az-sas-token TOKEN\n"
	    "                        (AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY, "
	    "AZURE_STORAGE_SAS_TOKEN)\n"
	    "  --gs-endpoint URL     (STORAGE_EMULATOR_HOST: no auth; GCS_ENDPOINT_URL)\n"
	    "  --gs-token TOKEN      (GOOGLE_OAUTH_ACCESS_TOKEN) an OAuth2 bearer token\n"
	    "  --gs-credentials FILE (GOOGLE_APPLICATION_CREDENTIALS) a service-account key\n"
	    "  --help                print this and exit\n"
	    "  --version             print the version and exit\n");
}

static int config_push(char ***v, size_t *n, const char *s)
{
	char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv)
		return -1;
	*v = nv;
	if (!(nv[*n] = strdup(s)))
		return -1;
	(*n)++;
	return 0;
}

/* An integer in [lo, hi], all of s; k/m/g suffixes (x1024) when sized is set. */
static int config_number(const char *s, long long lo, long long hi, int sized, long long *out)
{
	char *end;
	errno = 0;
	if (!*s || isspace((unsigned char)*s) || *s == '-' || *s == '+')
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	if (sized && *end) {
		unsigned shift = 0;
		switch (tolower((unsigned char)*end)) {
		case 'k': shift = 10; break;
		case 'm': shift = 20; break;
		case 'g': shift = 30; break;
		default: return -1;
		}
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
		if (*end == 'b' || *end == 'B')
			end++;
		if (v > (ULLONG_MAX >> shift))
			return -1;
		v <<= shift;
	}
	if (*end || v > (unsigned long long)hi || (long long)v < lo)
		return -1;
	*out = (long long)v;
	return 0;
}

/* Apply one setting; where says where it came from ("--threads", "FILE:3: threads"). */
static int config_set(struct config *c, const char *key, const char *val, const char *where,
                      struct err *e)
{
	long long n;
	if (strcmp(key, "listen") == 0) {
		if (strncmp(val, "tcp://", 6) != 0 && strncmp(val, "unix://", 7) != 0)
			return err_set(e, WIRE_E_INVALID,
			               "%s: '%s' is not tcp://HOST:PORT or unix:///PATH", where,
			               val);
		if (config_push(&c->listen, &c->nlisten, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "allow") == 0) {
		if (!strstr(val, "://"))
			return err_set(e, WIRE_E_INVALID,
			               "%s: '%s' is not a URI prefix such as file:///data/", where,
			               val);
		if (config_push(&c->allow, &c->nallow, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "threads") == 0) {
		if (config_number(val, 1, 1024, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a thread count (1-1024)",
			               where, val);
		c->threads = (int)n;
	} else if (strcmp(key, "direct-threads") == 0) {
		if (config_number(val, 1, 256, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a thread count (1-256)",
			               where, val);
		c->direct_threads = (int)n;
	} else if (strcmp(key, "crc-cache") == 0) {
		if (config_number(val, 0, 1 << 26, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID,
			               "%s: '%s' is not a number of entries (0-67108864)", where,
			               val);
		c->crc_cache = (size_t)n;
	} else if (strcmp(key, "metrics") == 0) {
		if (strncmp(val, "tcp://", 6) != 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not tcp://HOST:PORT", where,
			               val);
		if (config_str(&c->metrics, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "token-file") == 0) {
		if (!*val)
			return err_set(e, WIRE_E_INVALID, "%s: needs a file name", where);
		if (config_str(&c->token_file, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "tls-cert") == 0 || strcmp(key, "tls-key") == 0 ||
	           strcmp(key, "tls-client-ca") == 0) {
		char **slot = key[4] == 'c' && key[5] == 'e' ? &c->tls_cert
		              : key[4] == 'k'                ? &c->tls_key
		                                             : &c->tls_client_ca;
		if (!*val)
			return err_set(e, WIRE_E_INVALID, "%s: needs a file name", where);
		if (config_str(slot, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "cache-dir") == 0) {
		if (!*val)
			return err_set(e, WIRE_E_INVALID, "%s: needs a directory", where);
		if (config_str(&c->cache_dir, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else if (strcmp(key, "cache-disk") == 0) {
		if (config_number(val, 0, 1ll << 50, 1, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a size in bytes (k/m/g)",
			               where, val);
		c->cache_disk = (uint64_t)n;
	} else if (strcmp(key, "cache-mem") == 0 || strcmp(key, "cache-max-object") == 0) {
		if (config_number(val, 0, 1ll << 50, 1, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a size in bytes (k/m/g)",
			               where, val);
		if (strcmp(key, "cache-mem") == 0)
			c->cache_mem = (uint64_t)n;
		else
			c->cache_max_object = (uint64_t)n;
	} else if (strcmp(key, "cache-validate") == 0) {
		if (config_seconds_ms(val, 86400 * 365, &c->cache_validate_ms) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a number of seconds",
			               where, val);
	} else if (strcmp(key, "max-in-flight") == 0) {
		if (config_number(val, 1, 1 << 20, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a count (1-1048576)",
			               where, val);
		c->max_in_flight = (uint32_t)n;
	} else if (strcmp(key, "max-frame") == 0) {
		if (config_number(val, 4096, WIRE_MAX_FRAME_CAP, 1, &n) < 0)
			return err_set(e, WIRE_E_INVALID,
			               "%s: '%s' is not a frame size (4096 to %u bytes)", where,
			               val, WIRE_MAX_FRAME_CAP);
		c->max_frame = (uint32_t)n;
	} else if (strcmp(key, "idle-timeout") == 0) {
		if (config_number(val, 0, 86400 * 365, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a number of seconds",
			               where, val);
		c->idle_timeout = (int)n;
	} else if (strcmp(key, "drain-timeout") == 0) {
		if (config_number(val, 0, 86400, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a number of seconds",
			               where, val);
		c->drain_timeout = (int)n;
	} else if (strcmp(key, "log-format") == 0) {
		if (strcmp(val, "kv") != 0 && strcmp(val, "json") != 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not kv or json", where, val);
		c->log_json = strcmp(val, "json") == 0;
	} else if (strcmp(key, "log-level") == 0) {
		if (log_level_parse(val, &c->log_level) < 0)
			return err_set(e, WIRE_E_INVALID,
			               "%s: '%s' is not one of error, warn, info, debug", where,
			               val);
	} else if (strcmp(key, "parent-pid") == 0) {
		if (config_number(val, 1, INT_MAX, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a process id", where,
			               val);
		c->parent_pid = (pid_t)n;
	} else if (strcmp(key, "multipart-threshold") == 0 || strcmp(key, "part-size") == 0) {
		if (config_number(val, 1 << 10, 5ll << 30, 1, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a size (1k to 5g)",
			               where, val);
		if (key[0] == 'm')
			c->multipart_threshold = (uint64_t)n;
		else
			c->part_size = (uint64_t)n;
	} else if (strcmp(key, "list-page-size") == 0) {
		if (config_number(val, 1, 1000, 0, &n) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a count (1-1000)", where,
			               val);
		c->list_page_size = (int)n;
	} else if (strcmp(key, "parts-in-flight") == 0 || strcmp(key, "retries") == 0 ||
	           strcmp(key, "retry-base-ms") == 0) {
		if (config_number(val, key[0] == 'p' ? 1 : 0, key[0] == 'p' ? 64 : 100000, 0, &n) <
		    0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is out of range", where, val);
		if (key[0] == 'p')
			c->parts_in_flight = (int)n;
		else if (strcmp(key, "retries") == 0)
			c->retries = (int)n;
		else
			c->retry_base_ms = (int)n;
	} else if (strcmp(key, "connect-timeout") == 0 || strcmp(key, "op-timeout") == 0) {
		int ms;
		if (config_seconds_ms(val, 86400, &ms) < 0 || ms == 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not a number of seconds",
			               where, val);
		if (key[0] == 'c')
			c->connect_timeout_ms = ms;
		else
			c->op_timeout_ms = ms;
	} else if (strcmp(key, "s3-path-style") == 0) {
		if (strcmp(val, "0") != 0 && strcmp(val, "1") != 0)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not 0 or 1", where, val);
		c->s3_path_style = val[0] == '1';
	} else if (strncmp(key, "s3-", 3) == 0 || strncmp(key, "az-", 3) == 0 ||
	           strncmp(key, "gs-", 3) == 0) {
		char **slot = NULL;
		if (strcmp(key, "gs-endpoint") == 0)
			slot = &c->gs_endpoint;
		else if (strcmp(key, "gs-token") == 0)
			slot = &c->gs_token;
		else if (strcmp(key, "gs-credentials") == 0)
			slot = &c->gs_credentials;
		if (strcmp(key, "az-endpoint") == 0)
			slot = &c->az_endpoint;
		else if (strcmp(key, "az-account") == 0)
			slot = &c->az_account;
		else if (strcmp(key, "az-key") == 0)
			slot = &c->az_key;
		else if (strcmp(key, "az-sas-token") == 0)
			slot = &c->az_sas_token;
		if (strcmp(key, "s3-endpoint") == 0)
			slot = &c->s3_endpoint;
		else if (strcmp(key, "s3-region") == 0)
			slot = &c->s3_region;
		else if (strcmp(key, "s3-profile") == 0)
			slot = &c->s3_profile;
		else if (strcmp(key, "s3-access-key-id") == 0)
			slot = &c->s3_access_key_id;
		else if (strcmp(key, "s3-secret-access-key") == 0)
			slot = &c->s3_secret_access_key;
		else if (strcmp(key, "s3-session-token") == 0)
			slot = &c->s3_session_token;
		if (!slot)
			return err_set(e, WIRE_E_INVALID, "%s: unknown option (see --help)", where);
		if (config_str(slot, val) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	} else {
		return err_set(e, WIRE_E_INVALID, "%s: unknown option (see --help)", where);
	}
	return 0;
}

static char *config_trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

static int config_load(struct config *c, const char *path, struct err *e)
{
	int result = 0;
	char *line = NULL;
	size_t cap = 0;
	unsigned lineno = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return err_set(e, WIRE_E_INVALID, "--config %s: %s", path, strerror(errno));
	while (getline(&line, &cap, f) >= 0) {
		lineno++;
		/* '#' starts a comment at the start of a line or after whitespace, so values such
		 * as paths may still hold one */
		for (char *h = line; (h = strchr(h, '#')); h++) {
			if (h == line || isspace((unsigned char)h[-1])) {
				*h = '\0';
				break;
			}
		}
		char *s = config_trim(line);
		if (!*s)
			continue;
		char where[600];
		char *eq = strchr(s, '=');
		if (!eq) {
			result = err_set(e, WIRE_E_INVALID, "%s:%u: expected 'key = value'", path,
			                 lineno);
			goto done;
		}
		*eq = '\0';
		char *key = config_trim(s);
		char *val = config_trim(eq + 1);
		for (char *k = key; *k; k++)
			if (*k == '_')
				*k = '-';
		snprintf(where, sizeof(where), "%s:%u: %.64s", path, lineno, key);
		if (strcmp(key, "config") == 0 || strcmp(key, "help") == 0 ||
		    strcmp(key, "version") == 0) {
			result =
			    err_set(e, WIRE_E_INVALID, "%s: not allowed in a config file", where);
			goto done;
		}
		if (!*val) {
			result = err_set(e, WIRE_E_INVALID, "%s: missing value", where);
			goto done;
		}
		result = config_set(c, key, val, where, e);
		if (result < 0)
			goto done;
	}
	if (ferror(f))
		result = err_set(e, WIRE_E_INVALID, "--config %s: read error", path);
done:
	free(line);
	fclose(f);
	return result;
}

int config_reload_log_level(const char *path, int *level, struct err *e)
{
	struct config tmp;
	config_init(&tmp);
	tmp.log_level = -1;
	int rc = config_load(&tmp, path, e);
	*level = tmp.log_level;
	config_free(&tmp);
	return rc;
}

static const char *const config_keys[] = {
    "listen",           "allow",
    "threads",          "direct-threads",
    "config",           "max-in-flight",
    "max-frame",        "crc-cache",
    "metrics",          "token-file",
    "tls-cert",         "tls-key",
    "tls-client-ca",    "cache-mem",
    "cache-max-object", "cache-validate",
    "cache-dir",        "cache-disk",
    "idle-timeout",     "drain-timeout",
    "log-level",        "log-format",
    "parent-pid",       "help",
    "version",          "multipart-threshold",
    "part-size",        "parts-in-flight",
    "connect-timeout",  "op-timeout",
    "retries",          "retry-base-ms",
    "list-page-size",   "s3-endpoint",
    "s3-region",        "s3-profile",
    "s3-access-key-id", "s3-secret-access-key",
    "s3-session-token", "s3-path-style",
    "az-endpoint",      "az-account",
    "az-key",           "az-sas-token",
    "gs-endpoint",      "gs-token",
    "gs-credentials",
};

static int config_known(const char *key)
{
	for (size_t i = 0; i < sizeof(config_keys) / sizeof(config_keys[0]); i++)
		if (strcmp(key, config_keys[i]) == 0)
			return 1;
	return 0;
}

/* Split "--key=value" / "--key value"; *i advances past what was used. */
static int config_arg(int argc, char **argv, int *i, char *key, size_t keycap, const char **val,
                      struct err *e)
{
	const char *a = argv[*i];
	if (strncmp(a, "--", 2) != 0 || !a[2])
		return err_set(e, WIRE_E_INVALID, "unexpected argument '%s' (see --help)", a);
	a += 2;
	const char *eq = strchr(a, '=');
	size_t klen = eq ? (size_t)(eq - a) : strlen(a);
	if (klen >= keycap)
		return err_set(e, WIRE_E_INVALID, "unknown option '%s' (see --help)", argv[*i]);
	memcpy(key, a, klen);
	key[klen] = '\0';
	*val = NULL;
	if (!config_known(key))
		return err_set(e, WIRE_E_INVALID, "unknown option --%s (see --help)", key);
	if (strcmp(key, "help") == 0 || strcmp(key, "version") == 0) {
		if (eq)
			return err_set(e, WIRE_E_INVALID, "--%s takes no value", key);
		return 0;
	}
	if (eq) {
		*val = eq + 1;
	} else {
		if (*i + 1 >= argc)
			return err_set(e, WIRE_E_INVALID, "--%s needs a value", key);
		*val = argv[++*i];
	}
	return 0;
}

int config_parse(struct config *c, int argc, char **argv, struct err *e)
{
	char key[64];
	const char *val;
	const char *cfg_file = NULL;
	/* first pass: --help, --version and --config, which the other flags apply after */
	for (int i = 1; i < argc; i++) {
		int rc = config_arg(argc, argv, &i, key, sizeof(key), &val, e);
		if (rc < 0)
			return rc;
		if (strcmp(key, "help") == 0) {
			config_usage(stdout);
			return CONFIG_EXIT;
		}
		if (strcmp(key, "version") == 0) {
			printf("s3dliod %s\n", CONFIG_VERSION);
			return CONFIG_EXIT;
		}
		if (strcmp(key, "config") == 0)
			cfg_file = val;
	}
	if (cfg_file) {
		int rc = config_load(c, cfg_file, e);
		if (rc < 0)
			return rc;
		if (config_str(&c->config_file, cfg_file) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
	}
	for (int i = 1; i < argc; i++) {
		config_arg(argc, argv, &i, key, sizeof(key), &val, e);
		if (strcmp(key, "config") == 0)
			continue;
		char where[80];
		snprintf(where, sizeof(where), "--%s", key);
		int rc = config_set(c, key, val, where, e);
		if (rc < 0)
			return rc;
	}
	if (!c->cache_dir != !c->cache_disk)
		return err_set(e, WIRE_E_INVALID, "--cache-dir and --cache-disk go together");
	if (c->cache_dir && !c->cache_mem)
		return err_set(e, WIRE_E_INVALID,
		               "--cache-dir needs --cache-mem (the memory tier)");
	if (!c->tls_cert != !c->tls_key)
		return err_set(e, WIRE_E_INVALID, "--tls-cert and --tls-key go together");
	if (c->tls_client_ca && !c->tls_cert)
		return err_set(e, WIRE_E_INVALID, "--tls-client-ca needs --tls-cert and --tls-key");
	if (c->nlisten == 0 && config_push(&c->listen, &c->nlisten, CONFIG_DEFAULT_LISTEN) < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return CONFIG_RUN;
}
