/* cl_route.c: one client over several servers.
 *
 * The server URL may list servers separated by commas (tcp://a:9400,tcp://b:9400), or name a
 * DNS host whose name has several addresses of its preferred family (a Kubernetes headless
 * Service). Each server becomes a member: an ordinary single-server client with its own pool.
 *
 * Every URI goes to one member, chosen by rendezvous (highest random weight) hashing of the
 * URI with each member's address: every client agrees without talking, each server sees and
 * caches a stable share of the keys, and a server that leaves moves only its own share.
 *
 * A member that fails at the connection level (cannot connect, connection lost, server
 * shutting down) has its requests of the call moved to the next member in each URI's order,
 * and is avoided by later calls for a while: 1 s, doubling while it keeps failing, at most
 * 30 s; when every member is being avoided, all are tried again. A request fails with a
 * connection error only when every member failed it, and its message names each member's
 * cause. Requests are idempotent on the server (an upload is committed whole or not at all),
 * so moving one is safe; a LIST is moved only if none of its entries were delivered yet.
 *
 * A call whose requests span several members runs them at once, one thread per member
 * beyond the first (the caller's thread runs one): the allocator may then be called from
 * several threads at once, for distinct request indexes. */
#include "cl_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CL_ROUTE_MAX 256              /* members */
#define CL_ROUTE_AVOID_MS 1000u       /* first back-off after a failure */
#define CL_ROUTE_AVOID_MAX_MS 30000u

struct cl_member {
	s3dlio_client *c;
	uint64_t hash;        /* of its URL: its identity for rendezvous hashing */
	uint64_t avoid_until; /* cl_now_ms() before which new calls skip it */
	unsigned streak;      /* failures in a row */
};

/* ---- hashing ---- */

static uint64_t route_mix(uint64_t h)
{
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return h;
}

static uint64_t route_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then mixed */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return route_mix(h);
}

uint64_t cl_route_score(uint64_t member_hash, const char *uri, size_t uri_len)
{
	return route_mix(member_hash ^ route_hash(uri, uri_len));
}

/* ---- the URL list ---- */

static void route_free_list(char **v, char **names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i]);
		if (names)
			free(names[i]);
	}
	free(v);
	free(names);
}

/* Append url (taken over) with the certificate name it must be verified as (copied; NULL:
 * its own host). */
static int route_push(char ***v, char ***names, size_t *n, char *s, const char *name,
                      s3dlio_error *err)
{
	if (!s) {
		cl_err(err, S3DLIO_E_NOMEM, "out of memory");
		return S3DLIO_E_NOMEM;
	}
	for (size_t i = 0; i < *n; i++) {
		if (strcmp((*v)[i], s) == 0) { /* the same server twice would count twice */
			free(s);
			return 0;
		}
	}
	if (*n >= CL_ROUTE_MAX) {
		free(s);
		cl_err(err, S3DLIO_E_INVALID, "more than %d servers given", CL_ROUTE_MAX);
		return S3DLIO_E_INVALID;
	}
	char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (nv)
		*v = nv;
	char **nn = realloc(*names, (*n + 1) * sizeof(*nn));
	if (nn)
		*names = nn;
	char *nm = name ? strdup(name) : NULL;
	if (!nv || !nn || (name && !nm)) {
		free(s);
		free(nm);
		cl_err(err, S3DLIO_E_NOMEM, "out of memory");
		return S3DLIO_E_NOMEM;
	}
	nv[*n] = s;
	nn[(*n)++] = nm;
	return 0;
}

/* The addresses of a tcp:// entry's host, when it has several of its preferred family
 * (getaddrinfo's first answer): one member each. Otherwise the entry stays as written.
 * "localhost" and literal addresses stay as written: one server, however many addresses. */
static int route_expand_dns(const char *entry, char ***v, char ***names, size_t *n,
                            s3dlio_error *err)
{
	s3dlio_client tmp;
	memset(&tmp, 0, sizeof(tmp));
	int result = cl_conn_parse_url(&tmp, entry, err);
	struct addrinfo *res = NULL;
	size_t found = 0;
	if (result)
		goto done;
	if (tmp.is_unix || strcmp(tmp.host, "localhost") == 0 || strchr(tmp.host, ':'))
		goto as_written;
	struct in_addr a4;
	if (inet_pton(AF_INET, tmp.host, &a4) == 1)
		goto as_written;
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/* a name that does not resolve now is left to connect time, which reports it */
	if (getaddrinfo(tmp.host, tmp.port, &hints, &res) != 0 || !res)
		goto as_written;
	size_t before = *n;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		if (ai->ai_family == res->ai_family)
			found++;
	if (found < 2)
		goto as_written;
	for (struct addrinfo *ai = res; ai && !result; ai = ai->ai_next) {
		char host[INET6_ADDRSTRLEN];
		const void *addr;
		if (ai->ai_family != res->ai_family)
			continue;
		if (ai->ai_family == AF_INET)
			addr = &((const struct sockaddr_in *)ai->ai_addr)->sin_addr;
		else
			addr = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		if (!inet_ntop(ai->ai_family, addr, host, sizeof(host)))
			continue;
		/* same scheme; a TLS member is verified as the name, not the address */
		result = route_push(v, names, n,
		                    cl_strdup_printf(ai->ai_family == AF_INET6 ? "%.6s[%s]:%s"
		                                                               : "%.6s%s:%s",
		                                     entry, host, tmp.port),
		                    tmp.host, err);
	}
	if (!result && *n == before)
		goto as_written;
	goto done;
as_written:
	result = route_push(v, names, n, strdup(entry), NULL, err);
done:
	if (res)
		freeaddrinfo(res);
	free(tmp.host);
	free(tmp.port);
	free(tmp.path);
	return result;
}

int cl_route_split(const char *url, char ***out, char ***out_names, size_t *nout,
                   s3dlio_error *err)
{
	char **v = NULL, **names = NULL;
	size_t n = 0;
	int result = 0;
	*out = NULL;
	*out_names = NULL;
	*nout = 0;
	if (!url || !*url) {
		cl_err(err, S3DLIO_E_INVALID,
		       "no server URL given (tcp://HOST:PORT or unix:///PATH)");
		return S3DLIO_E_INVALID;
	}
	const char *p = url;
	while (!result) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		while (len && (*p == ' ' || *p == '\t')) {
			p++;
			len--;
		}
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (!len) {
			cl_err(err, S3DLIO_E_INVALID,
			       "%s: an empty entry in the server list (URLs separated by commas)",
			       url);
			result = S3DLIO_E_INVALID;
			break;
		}
		char *entry = strndup(p, len);
		if (!entry) {
			cl_err(err, S3DLIO_E_NOMEM, "out of memory");
			result = S3DLIO_E_NOMEM;
			break;
		}
		result = route_expand_dns(entry, &v, &names, &n, err);
		free(entry);
		if (!end)
			break;
		p = end + 1;
	}
	if (result) {
		route_free_list(v, names, n);
		return result;
	}
	*out = v;
	*out_names = names;
	*nout = n;
	return 0;
}

void cl_route_free_list(char **v, char **names, size_t n)
{
	route_free_list(v, names, n);
}

/* ---- members ---- */

int cl_route_init(s3dlio_client *c, char **urls, char **names, size_t n,
                  const s3dlio_options *opts, s3dlio_error *err)
{
	char causes[sizeof(err->message)] = "";
	size_t clen = 0;
	unsigned reachable = 0;
	c->members = calloc(n, sizeof(*c->members));
	if (!c->members) {
		cl_err(err, S3DLIO_E_NOMEM, "out of memory");
		return S3DLIO_E_NOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		struct cl_member *m = &c->members[i];
		s3dlio_error e1 = {0, ""};
		m->c = cl_client_new_one(urls[i], opts, 0, &e1);
		if (!m->c) { /* a malformed entry: the list is wrong, not a server */
			cl_err(err, e1.code, "%s", e1.message);
			return e1.code;
		}
		c->nmembers++;
		m->hash = route_hash(urls[i], strlen(urls[i]));
		if (names[i] && !(m->c->tls_name = strdup(names[i]))) {
			cl_err(err, S3DLIO_E_NOMEM, "out of memory");
			return S3DLIO_E_NOMEM;
		}
	}
	/* connect to each once: the ones not there now are avoided, not fatal */
	for (unsigned i = 0; i < c->nmembers; i++) {
		struct cl_member *m = &c->members[i];
		struct cl_conn *cn = NULL;
		s3dlio_error e = {0, ""};
		if (cl_pool_checkout(m->c, 1, &cn, &e) == 0) {
			cl_pool_checkin(m->c, cn);
			reachable++;
			continue;
		}
		m->avoid_until = cl_now_ms() + CL_ROUTE_AVOID_MS;
		m->streak = 1;
		int k = snprintf(causes + clen, sizeof(causes) - clen, "%s%s", clen ? "; " : "",
		                 e.message);
		if (k > 0)
			clen = clen + (size_t)k < sizeof(causes) ? clen + (size_t)k : sizeof(causes) - 1;
	}
	if (!reachable) {
		cl_err(err, S3DLIO_E_CONNECTION, "none of the %u servers answered: %s", c->nmembers,
		       causes);
		return S3DLIO_E_CONNECTION;
	}
	return 0;
}

void cl_route_destroy(s3dlio_client *c)
{
	for (unsigned i = 0; i < c->nmembers; i++)
		s3dlio_client_free(c->members[i].c);
	free(c->members);
	c->members = NULL;
	c->nmembers = 0;
}

void cl_route_stats(s3dlio_client *c, s3dlio_stats *out)
{
	for (unsigned i = 0; i < c->nmembers; i++) {
		s3dlio_stats s;
		s3dlio_get_stats(c->members[i].c, &s);
		out->requests += s.requests;
		out->errors += s.errors;
		out->bytes_received += s.bytes_received;
		out->bytes_direct += s.bytes_direct;
		out->bytes_copied += s.bytes_copied;
		out->bytes_sent += s.bytes_sent;
		out->connects += s.connects;
		out->reconnects += s.reconnects;
		out->busy_retries += s.busy_retries;
	}
}

const char *cl_route_member_url(const s3dlio_client *c, const char *uri)
{
	unsigned best = 0;
	uint64_t top = 0;
	for (unsigned i = 0; i < c->nmembers; i++) {
		uint64_t s = cl_route_score(c->members[i].hash, uri, strlen(uri));
		if (i == 0 || s > top) {
			top = s;
			best = i;
		}
	}
	return c->nmembers ? c->members[best].c->url : c->url;
}

/* ---- running a call ---- */

struct route_job {
	s3dlio_client *m;
	struct cl_op *ops; /* copies of the call's requests routed to m */
	size_t *from;      /* ops[j] is the call's request from[j] */
	size_t n, cap;
	unsigned max_in_flight;
	s3dlio_alloc_fn alloc;
	s3dlio_release_fn release;
	void *actx;
	pthread_t thread;
	int threaded;
};

static void *route_job_main(void *arg)
{
	struct route_job *j = arg;
	cl_engine_run(j->m, j->ops, j->n, j->max_in_flight, j->alloc, j->release, j->actx);
	return NULL;
}

/* A failure that says the server, not the request, is the problem: no connection could be
 * set up (refused, timed out, TLS refused...), or one broke. */
static int route_member_failed(const struct cl_op *op)
{
	if (op->status != S3DLIO_E_CONNECTION && !op->no_conn)
		return 0;
	/* entries already handed to the caller's callback cannot be taken back */
	return op->kind != CL_LIST || !op->got_frame;
}

/* The member for op among those allowed: the highest score. -1 if none. */
static int route_pick(const s3dlio_client *c, const struct cl_op *op, const uint8_t *allowed)
{
	int best = -1;
	uint64_t top = 0;
	for (unsigned i = 0; i < c->nmembers; i++) {
		if (!allowed[i])
			continue;
		uint64_t s = cl_route_score(c->members[i].hash, op->uri, op->uri_len);
		if (best < 0 || s > top) {
			top = s;
			best = (int)i;
		}
	}
	return best;
}

static void route_note(s3dlio_client *c, unsigned i, int failed, uint64_t now)
{
	struct cl_member *m = &c->members[i];
	pthread_mutex_lock(&c->mu);
	if (failed) {
		uint64_t wait = CL_ROUTE_AVOID_MS;
		for (unsigned k = 1; k < m->streak && wait < CL_ROUTE_AVOID_MAX_MS; k++)
			wait *= 2;
		if (wait > CL_ROUTE_AVOID_MAX_MS)
			wait = CL_ROUTE_AVOID_MAX_MS;
		m->streak++;
		m->avoid_until = now + wait;
	} else {
		m->streak = 0;
		m->avoid_until = 0;
	}
	pthread_mutex_unlock(&c->mu);
}

/* Fill allowed[]: members not failed in this call and not being avoided; if that leaves
 * none, every member not failed in this call. Returns how many. */
static unsigned route_allowed(s3dlio_client *c, const uint8_t *failed, uint8_t *allowed)
{
	unsigned k = 0;
	uint64_t now = cl_now_ms();
	pthread_mutex_lock(&c->mu);
	for (unsigned i = 0; i < c->nmembers; i++) {
		allowed[i] = !failed[i] && c->members[i].avoid_until <= now;
		k += allowed[i];
	}
	pthread_mutex_unlock(&c->mu);
	if (k)
		return k;
	for (unsigned i = 0; i < c->nmembers; i++) {
		allowed[i] = !failed[i];
		k += allowed[i];
	}
	return k;
}

/* Fail what no server could do: with the code every server gave, if they agree (a refused
 * token or certificate stays a PermissionError), else CONNECTION; the message names each
 * server's cause. */
static void route_fail_rest(s3dlio_client *c, struct cl_op *ops, const size_t *pending,
                            size_t npending, char **why, const int *why_code)
{
	int code = 0;
	for (unsigned i = 0; i < c->nmembers; i++) {
		if (!why_code[i] || (code && why_code[i] != code)) {
			code = S3DLIO_E_CONNECTION;
			break;
		}
		code = why_code[i];
	}
	char causes[1024] = "";
	size_t clen = 0;
	for (unsigned i = 0; i < c->nmembers && clen + 1 < sizeof(causes); i++) {
		int k = snprintf(causes + clen, sizeof(causes) - clen, "%s%s: %s", clen ? "; " : "",
		                 c->members[i].c->url, why[i] ? why[i] : "not tried");
		if (k > 0)
			clen = clen + (size_t)k < sizeof(causes) ? clen + (size_t)k : sizeof(causes) - 1;
	}
	for (size_t k = 0; k < npending; k++) {
		struct cl_op *op = &ops[pending[k]];
		op->status = code;
		op->error = cl_strdup_printf("%.*s: all %u servers failed: %s", (int)op->uri_len,
		                             op->uri, c->nmembers, causes);
	}
}

void cl_route_run(s3dlio_client *c, struct cl_op *ops, size_t n, unsigned max_in_flight,
                  s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *actx)
{
	if (!n)
		return;
	unsigned nm = c->nmembers;
	struct route_job *jobs = calloc(nm, sizeof(*jobs));
	uint8_t *failed = calloc(nm, 1), *allowed = calloc(nm, 1);
	char **why = calloc(nm, sizeof(*why));
	int *why_code = calloc(nm, sizeof(*why_code));
	size_t *pending = malloc(n * sizeof(*pending));
	size_t npending = n;
	if (!jobs || !failed || !allowed || !why || !why_code || !pending) {
		for (size_t i = 0; i < n; i++) {
			ops[i].status = S3DLIO_E_NOMEM;
			ops[i].error = cl_strdup_printf("%.*s: out of memory", (int)ops[i].uri_len,
			                                ops[i].uri ? ops[i].uri : "");
		}
		goto done;
	}
	for (size_t i = 0; i < n; i++)
		pending[i] = i;
	while (npending) {
		if (!route_allowed(c, failed, allowed)) {
			route_fail_rest(c, ops, pending, npending, why, why_code);
			break;
		}
		/* route: every pending request to its member */
		for (unsigned i = 0; i < nm; i++)
			jobs[i].n = 0;
		int oom = 0;
		for (size_t k = 0; k < npending && !oom; k++) {
			struct cl_op *op = &ops[pending[k]];
			struct route_job *j = &jobs[route_pick(c, op, allowed)];
			if (j->n == j->cap) {
				size_t cap = j->cap ? 2 * j->cap : 16;
				struct cl_op *nops = realloc(j->ops, cap * sizeof(*nops));
				if (nops)
					j->ops = nops;
				size_t *nfrom = realloc(j->from, cap * sizeof(*nfrom));
				if (nfrom)
					j->from = nfrom;
				if (!nops || !nfrom) {
					oom = 1;
					break;
				}
				j->cap = cap;
			}
			j->ops[j->n] = *op; /* inputs only: the call's copy is not run */
			j->from[j->n++] = pending[k];
		}
		if (oom) {
			for (size_t k = 0; k < npending; k++) {
				struct cl_op *op = &ops[pending[k]];
				op->status = S3DLIO_E_NOMEM;
				op->error = cl_strdup_printf("%.*s: out of memory", (int)op->uri_len,
				                             op->uri);
			}
			break;
		}
		/* run: the caller's thread takes the last job */
		int last = -1;
		for (unsigned i = 0; i < nm; i++)
			if (jobs[i].n)
				last = (int)i;
		for (unsigned i = 0; i < nm; i++) {
			struct route_job *j = &jobs[i];
			j->threaded = 0;
			if (!j->n || (int)i == last)
				continue;
			j->m = c->members[i].c;
			j->max_in_flight = max_in_flight;
			j->alloc = alloc;
			j->release = release;
			j->actx = actx;
			j->threaded = pthread_create(&j->thread, NULL, route_job_main, j) == 0;
			if (!j->threaded)
				route_job_main(j);
		}
		jobs[last].m = c->members[last].c;
		jobs[last].max_in_flight = max_in_flight;
		jobs[last].alloc = alloc;
		jobs[last].release = release;
		jobs[last].actx = actx;
		route_job_main(&jobs[last]);
		for (unsigned i = 0; i < nm; i++)
			if (jobs[i].threaded)
				pthread_join(jobs[i].thread, NULL);
		/* collect: what a failed member could not do goes round again */
		size_t again = 0;
		uint64_t now = cl_now_ms();
		for (unsigned i = 0; i < nm; i++) {
			struct route_job *j = &jobs[i];
			if (!j->n)
				continue;
			int member_failed = 0;
			for (size_t k = 0; k < j->n; k++) {
				struct cl_op *r = &j->ops[k];
				if (route_member_failed(r)) {
					member_failed = 1;
					if (!why[i] && r->error) {
						/* "URI: cause": keep the cause, the URI differs per request */
						const char *cause = r->error;
						if (strncmp(cause, r->uri, r->uri_len) == 0 &&
						    strncmp(cause + r->uri_len, ": ", 2) == 0)
							cause += r->uri_len + 2;
						why[i] = strdup(cause);
						why_code[i] = r->status;
					}
					cl_free_msg(r->error);
					pending[again++] = j->from[k];
					continue;
				}
				ops[j->from[k]] = *r;
			}
			if (member_failed)
				failed[i] = 1;
			route_note(c, i, member_failed, now);
		}
		npending = again;
	}
done:
	if (jobs) {
		for (unsigned i = 0; i < nm; i++) {
			free(jobs[i].ops);
			free(jobs[i].from);
		}
	}
	if (why)
		for (unsigned i = 0; i < nm; i++)
			free(why[i]);
	free(jobs);
	free(failed);
	free(allowed);
	free(why);
	free(why_code);
	free(pending);
}
