/* tokens.c: the token file, tenants and their limits (see tokens.h). */
#include "tokens.h"

#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "uri.h"
#include "wire.h"

#define TOKENS_BUSY_CONN_MS 1000 /* retry hint when a tenant has all its connections */
#define TOKENS_BUSY_REQ_MS 5     /* ... all its requests in flight */

static uint64_t tokens_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void tokens_free(struct tokens *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		struct token *tk = &t->v[i];
		if (tk->token) {
			OPENSSL_cleanse(tk->token, tk->len);
			free(tk->token);
		}
		for (size_t j = 0; j < tk->nprefixes; j++) {
			free(tk->prefixes[j].text);
			free(tk->prefixes[j].path);
		}
		free(tk->prefixes);
	}
	free(t->v);
	free(t);
}

void tokens_release(struct tokens *t)
{
	if (t && atomic_fetch_sub(&t->refs, 1) == 1)
		tokens_free(t);
}

struct tokens *tokens_acquire(struct tokens_registry *reg)
{
	if (!reg->path)
		return NULL;
	pthread_mutex_lock(&reg->mu);
	struct tokens *t = reg->cur;
	if (t)
		atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&reg->mu);
	return t;
}

/* The registry's tenant of that name, made if new (under reg->mu). */
static struct tenant *tokens_tenant(struct tokens_registry *reg, const char *name)
{
	for (struct tenant *t = reg->tenants; t; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	struct tenant *t = calloc(1, sizeof(*t));
	if (!t || !(t->name = strdup(name))) {
		free(t);
		return NULL;
	}
	pthread_mutex_init(&t->mu, NULL);
	t->next = reg->tenants;
	reg->tenants = t;
	return t;
}

static int tokens_number(const char *s, int sized, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	if (sized && *end) {
		int shift = tolower((unsigned char)*end) == 'k'   ? 10
		            : tolower((unsigned char)*end) == 'm' ? 20
		            : tolower((unsigned char)*end) == 'g' ? 30
		                                                  : -1;
		if (shift < 0 || v > (ULLONG_MAX >> shift))
			return -1;
		v <<= shift;
		end++;
	}
	if (*end)
		return -1;
	*out = v;
	return 0;
}

/* Take the tightest of two limits (0: none). */
static uint64_t tokens_tighter(uint64_t a, uint64_t b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	return a < b ? a : b;
}

struct tokens_limits {
	struct tenant *t;
	uint64_t conns, in_flight, bps;
};

/* Add the prefix p to tk. */
static int tokens_parse_prefix(struct token *tk, const char *p, const char *where, struct err *e)
{
	int result = 0;
	struct uri *u = NULL;
	struct token_prefix *v = realloc(tk->prefixes, (tk->nprefixes + 1) * sizeof(*v));
	if (!v)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	tk->prefixes = v;
	struct token_prefix *tp = &v[tk->nprefixes];
	memset(tp, 0, sizeof(*tp));
	tk->nprefixes++;
	size_t n = strlen(p);
	int any = strcmp(p, "*") == 0;
	if (!(tp->text = malloc(n + 2)))
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	snprintf(tp->text, n + 2, "%s%s", p, any || p[n - 1] == '/' ? "" : "/");
	if (any)
		return 0;
	struct err pe;
	if (!(u = malloc(sizeof(*u)))) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	if (!strstr(p, "://") || uri_parse_str(tp->text, u, &pe) < 0) {
		result = err_set(e, WIRE_E_INVALID,
		                 "%s: '%s' is not a URI prefix such as s3://bucket/team/ (or *)",
		                 where, p);
		goto done;
	}
	tp->scheme = (int)u->scheme;
	tp->path_len = u->path_len;
	if (!(tp->path = malloc(u->path_len + 2))) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	memcpy(tp->path, u->path, u->path_len + 1);
	if (tp->path_len == 0 || tp->path[tp->path_len - 1] != '/') {
		tp->path[tp->path_len++] = '/'; /* parsing a local path drops the last slash */
		tp->path[tp->path_len] = '\0';
	}
done:
	free(u);
	return result;
}

/* Parse one line into tk (and its limits into lim); where names it in messages. */
static int tokens_parse_line(struct tokens_registry *reg, char *line, const char *where,
                             struct token *tk, struct tokens_limits *lim, struct err *e)
{
	char *save = NULL;
	char *tok = strtok_r(line, " \t", &save);
	char *name = strtok_r(NULL, " \t", &save);
	char *rights = strtok_r(NULL, " \t", &save);
	char *prefixes = strtok_r(NULL, " \t", &save);
	if (!tok || !name || !rights || !prefixes)
		return err_set(e, WIRE_E_INVALID,
		               "%s: expected 'TOKEN NAME ro|rw PREFIX[,PREFIX...] [limits]'",
		               where);
	size_t len = strlen(tok);
	if (len > WIRE_MAX_TOKEN)
		return err_set(e, WIRE_E_INVALID, "%s: token longer than %u bytes", where,
		               WIRE_MAX_TOKEN);
	for (const char *p = tok; *p; p++)
		if (*p < 0x21 || *p > 0x7e)
			return err_set(e, WIRE_E_INVALID, "%s: the token is not printable ASCII",
			               where);
	for (const char *p = name; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
			return err_set(
			    e, WIRE_E_INVALID,
			    "%s: tenant name '%s' may hold only letters, digits, '_', '.', '-'",
			    where, name);
	if (strcmp(rights, "ro") == 0)
		tk->rw = 0;
	else if (strcmp(rights, "rw") == 0)
		tk->rw = 1;
	else
		return err_set(e, WIRE_E_INVALID, "%s: rights '%s' are not ro or rw", where,
		               rights);
	if (!(tk->token = strdup(tok)))
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	tk->len = len;
	char *psave = NULL;
	for (char *p = strtok_r(prefixes, ",", &psave); p; p = strtok_r(NULL, ",", &psave)) {
		int rc = tokens_parse_prefix(tk, p, where, e);
		if (rc < 0)
			return rc;
	}
	if (!tk->nprefixes)
		return err_set(e, WIRE_E_INVALID, "%s: no URI prefix", where);
	for (char *opt = strtok_r(NULL, " \t", &save); opt; opt = strtok_r(NULL, " \t", &save)) {
		uint64_t v;
		char *eq = strchr(opt, '=');
		if (!eq)
			return err_set(e, WIRE_E_INVALID, "%s: '%s' is not KEY=VALUE", where, opt);
		*eq = '\0';
		int sized = strcmp(opt, "max-bytes-per-sec") == 0;
		if (tokens_number(eq + 1, sized, &v) < 0 || v > (sized ? (1ull << 50) : 1u << 30))
			return err_set(e, WIRE_E_INVALID, "%s: %s=%s is not a number", where, opt,
			               eq + 1);
		if (strcmp(opt, "max-conns") == 0)
			lim->conns = tokens_tighter(lim->conns, v);
		else if (strcmp(opt, "max-in-flight") == 0)
			lim->in_flight = tokens_tighter(lim->in_flight, v);
		else if (sized)
			lim->bps = tokens_tighter(lim->bps, v);
		else
			return err_set(e, WIRE_E_INVALID,
			               "%s: unknown limit '%s' (max-conns, max-in-flight, "
			               "max-bytes-per-sec)",
			               where, opt);
	}
	pthread_mutex_lock(&reg->mu);
	tk->tenant = tokens_tenant(reg, name);
	pthread_mutex_unlock(&reg->mu);
	if (!tk->tenant)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return 0;
}

/* Read the file into a new table; the tenants' limits are applied only on success. */
static int tokens_load(struct tokens_registry *reg, struct tokens **out, struct err *e)
{
	int result = 0;
	char *line = NULL;
	size_t cap = 0;
	struct tokens *t = calloc(1, sizeof(*t));
	struct tokens_limits *lims = NULL;
	size_t nlims = 0;
	FILE *f = fopen(reg->path, "re");
	if (!t) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	atomic_init(&t->refs, 1);
	if (!f) {
		result =
		    err_set(e, WIRE_E_INVALID, "--token-file %s: %s", reg->path, strerror(errno));
		goto done;
	}
	ssize_t n;
	for (int lineno = 1; (n = getline(&line, &cap, f)) >= 0; lineno++) {
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
		                 line[n - 1] == '\t'))
			line[--n] = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p || *p == '#')
			continue;
		char where[600];
		snprintf(where, sizeof(where), "--token-file %.500s:%d", reg->path, lineno);
		struct token *v = realloc(t->v, (t->n + 1) * sizeof(*v));
		struct tokens_limits *lv = realloc(lims, (nlims + 1) * sizeof(*lv));
		if (v)
			t->v = v;
		if (lv)
			lims = lv;
		if (!v || !lv) {
			result = err_set(e, WIRE_E_INTERNAL, "out of memory");
			goto done;
		}
		memset(&t->v[t->n], 0, sizeof(t->v[0]));
		memset(&lims[nlims], 0, sizeof(lims[0]));
		t->n++;
		nlims++;
		result = tokens_parse_line(reg, p, where, &t->v[t->n - 1], &lims[nlims - 1], e);
		if (result < 0)
			goto done;
		for (size_t i = 0; i + 1 < t->n; i++)
			if (t->v[i].len == t->v[t->n - 1].len &&
			    memcmp(t->v[i].token, t->v[t->n - 1].token, t->v[i].len) == 0) {
				result = err_set(e, WIRE_E_INVALID,
				                 "%s: the same token is listed twice", where);
				goto done;
			}
	}
	if (ferror(f)) {
		result = err_set(e, WIRE_E_INVALID, "--token-file %s: read error", reg->path);
		goto done;
	}
	/* the tightest limits of each tenant's lines; tenants no longer listed keep theirs */
	for (size_t i = 0; i < t->n; i++) {
		struct tenant *tn = t->v[i].tenant;
		uint64_t c = 0, fl = 0, b = 0;
		for (size_t j = 0; j < t->n; j++)
			if (t->v[j].tenant == tn) {
				c = tokens_tighter(c, lims[j].conns);
				fl = tokens_tighter(fl, lims[j].in_flight);
				b = tokens_tighter(b, lims[j].bps);
			}
		atomic_store(&tn->max_conns, (unsigned)c);
		atomic_store(&tn->max_in_flight, (unsigned)fl);
		atomic_store(&tn->max_bps, b);
	}
	*out = t;
	t = NULL;
done:
	if (f)
		fclose(f);
	free(line);
	free(lims);
	tokens_free(t);
	return result;
}

int tokens_registry_init(struct tokens_registry *reg, const char *path, struct err *e)
{
	memset(reg, 0, sizeof(*reg));
	pthread_mutex_init(&reg->mu, NULL);
	if (!path)
		return 0;
	if (!(reg->path = strdup(path)))
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return tokens_reload(reg, e);
}

int tokens_reload(struct tokens_registry *reg, struct err *e)
{
	struct tokens *t = NULL;
	if (!reg->path)
		return 0;
	int rc = tokens_load(reg, &t, e);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&reg->mu);
	struct tokens *old = reg->cur;
	t->gen = atomic_load(&reg->gen) + 1;
	reg->cur = t;
	atomic_store_explicit(&reg->gen, t->gen, memory_order_release);
	pthread_mutex_unlock(&reg->mu);
	tokens_release(old);
	return 0;
}

void tokens_registry_free(struct tokens_registry *reg)
{
	tokens_release(reg->cur);
	reg->cur = NULL;
	struct tenant *t = reg->tenants;
	while (t) {
		struct tenant *next = t->next;
		pthread_mutex_destroy(&t->mu);
		free(t->name);
		free(t);
		t = next;
	}
	reg->tenants = NULL;
	free(reg->path);
	reg->path = NULL;
	pthread_mutex_destroy(&reg->mu);
}

const struct token *tokens_find(const struct tokens *t, const char *tok, size_t len)
{
	const struct token *found = NULL;
	if (!t || !tok)
		return NULL;
	/* every entry of the right length is compared in full: the time taken does not say
	 * how much of a guess was right */
	for (size_t i = 0; i < t->n; i++)
		if (t->v[i].len == len && CRYPTO_memcmp(t->v[i].token, tok, len) == 0)
			found = &t->v[i];
	return found;
}

int tokens_check(const struct token *tk, uint32_t wire_type, const struct uri *u, struct err *e)
{
	int write = wire_type == WIRE_PUT || wire_type == WIRE_DELETE || wire_type == WIRE_MKDIR ||
	            wire_type == WIRE_RMDIR;
	if (write && !tk->rw)
		return err_set(e, WIRE_E_PERMISSION,
		               "%s: tenant '%s' has a read-only token: %s is not allowed", u->text,
		               tk->tenant->name, wire_type_str(wire_type));
	for (size_t i = 0; i < tk->nprefixes; i++) {
		const struct token_prefix *p = &tk->prefixes[i];
		if (!p->scheme)
			return 0; /* '*' */
		if ((int)u->scheme == p->scheme && u->path_len >= p->path_len &&
		    memcmp(u->path, p->path, p->path_len) == 0)
			return 0;
	}
	return err_set(e, WIRE_E_PERMISSION,
	               "%s: tenant '%s' may not access this URI (its token covers %s%s)", u->text,
	               tk->tenant->name, tk->prefixes[0].text, tk->nprefixes > 1 ? ", ..." : "");
}

int tenant_conn_enter(struct tenant *t, uint32_t *retry_ms, struct err *e)
{
	unsigned max = atomic_load(&t->max_conns);
	unsigned now = atomic_fetch_add(&t->conns, 1);
	if (max && now >= max) {
		atomic_fetch_sub(&t->conns, 1);
		atomic_fetch_add(&t->busy, 1);
		*retry_ms = TOKENS_BUSY_CONN_MS;
		return err_set(e, WIRE_E_BUSY, "tenant '%s' has %u connections open (its limit)",
		               t->name, max);
	}
	return 0;
}

void tenant_conn_leave(struct tenant *t)
{
	atomic_fetch_sub(&t->conns, 1);
}

/* Refill the bucket (under t->mu): max_bps per second, at most one second's worth. */
static void tenant_refill(struct tenant *t, uint64_t bps, uint64_t now)
{
	if (!t->bucket_ns) {
		t->bucket = (double)bps;
		t->bucket_ns = now;
		return;
	}
	t->bucket += (double)(now - t->bucket_ns) * (double)bps / 1e9;
	if (t->bucket > (double)bps)
		t->bucket = (double)bps;
	t->bucket_ns = now;
}

int tenant_req_enter(struct tenant *t, const char *uri, uint32_t *retry_ms, struct err *e)
{
	uint64_t bps = atomic_load(&t->max_bps);
	if (bps) {
		pthread_mutex_lock(&t->mu);
		tenant_refill(t, bps, tokens_now_ns());
		double debt = -t->bucket;
		pthread_mutex_unlock(&t->mu);
		if (debt > 0) {
			double ms = debt * 1000.0 / (double)bps + 1;
			*retry_ms = ms > 60000 ? 60000 : (uint32_t)ms;
			atomic_fetch_add(&t->busy, 1);
			return err_set(e, WIRE_E_BUSY,
			               "%s: tenant '%s' is over its %" PRIu64 " bytes per second",
			               uri, t->name, bps);
		}
	}
	unsigned max = atomic_load(&t->max_in_flight);
	unsigned now = atomic_fetch_add(&t->in_flight, 1);
	if (max && now >= max) {
		atomic_fetch_sub(&t->in_flight, 1);
		atomic_fetch_add(&t->busy, 1);
		*retry_ms = TOKENS_BUSY_REQ_MS;
		return err_set(e, WIRE_E_BUSY,
		               "%s: tenant '%s' has %u requests in flight (its limit)", uri,
		               t->name, max);
	}
	atomic_fetch_add_explicit(&t->requests, 1, memory_order_relaxed);
	return 0;
}

void tenant_req_leave(struct tenant *t)
{
	atomic_fetch_sub(&t->in_flight, 1);
}

void tenant_charge(struct tenant *t, uint64_t n)
{
	atomic_fetch_add_explicit(&t->bytes, n, memory_order_relaxed);
	uint64_t bps = atomic_load(&t->max_bps);
	if (!bps)
		return;
	pthread_mutex_lock(&t->mu);
	tenant_refill(t, bps, tokens_now_ns());
	t->bucket -= (double)n;
	pthread_mutex_unlock(&t->mu);
}

void tokens_render_metrics(struct tokens_registry *reg, struct evbuffer *b)
{
	if (!reg || !reg->path)
		return;
	static const char *const names[] = {"s3dliod_tenant_connections",
	                                    "gauge",
	                                    "Connections open, by tenant.",
	                                    "s3dliod_tenant_requests_in_flight",
	                                    "gauge",
	                                    "Requests in flight, by tenant.",
	                                    "s3dliod_tenant_requests_total",
	                                    "counter",
	                                    "Requests admitted, by tenant.",
	                                    "s3dliod_tenant_busy_total",
	                                    "counter",
	                                    "BUSY answers (tenant limits), by tenant.",
	                                    "s3dliod_tenant_refused_total",
	                                    "counter",
	                                    "Requests refused by the token's rights.",
	                                    "s3dliod_tenant_bytes_total",
	                                    "counter",
	                                    "Object bytes sent and received, by tenant."};
	pthread_mutex_lock(&reg->mu);
	for (int k = 0; k < 6; k++) {
		evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", names[3 * k],
		                    names[3 * k + 2], names[3 * k], names[3 * k + 1]);
		for (struct tenant *t = reg->tenants; t; t = t->next) {
			uint64_t v = k == 0   ? atomic_load(&t->conns)
			             : k == 1 ? atomic_load(&t->in_flight)
			             : k == 2 ? (uint64_t)atomic_load(&t->requests)
			             : k == 3 ? (uint64_t)atomic_load(&t->busy)
			             : k == 4 ? (uint64_t)atomic_load(&t->refused)
			                      : (uint64_t)atomic_load(&t->bytes);
			evbuffer_add_printf(b, "%s{tenant=\"%s\"} %" PRIu64 "\n", names[3 * k],
			                    t->name, v);
		}
	}
	pthread_mutex_unlock(&reg->mu);
}
