/* server.c: listeners, worker threads, signals, draining (see server.h).
 *
 * Hand-off: the main thread pushes accepted sockets onto a worker's locked queue and
 * event_active()s the worker's wake event; libevent's pthread support makes that safe
 * across threads. The same queue carries the drain and stop requests. Nothing on a
 * connection's hot path takes a lock. */
#include "server.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cache.h"
#include "cloud.h"
#include "conn.h"
#include "crccache.h"
#include "fetch.h"
#include "http.h"
#include "iopool.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"
#include "tokens.h"
#include "uri.h"

#define SERVER_BACKLOG 1024

struct server;

struct server_listener {
	struct server *srv;
	struct evconnlistener *lev;
	struct event *retry; /* re-enables accepting after running out of descriptors */
	char url[256];
	char *unix_path; /* removed at stop */
	int is_tcp;
};

struct worker_item {
	int fd;
	unsigned flags; /* CONN_PEER_* */
	char peer[64];
};

struct worker_slot {
	struct worker *w;
	struct conn *c;
	TAILQ_ENTRY(worker_slot) link;
};

struct worker {
	struct server *srv;
	pthread_t thread;
	int started;
	struct event_base *base;
	struct event *wake;
	pthread_mutex_t mu; /* guards q, qn, qcap, drain_req, stop_req */
	struct worker_item *q;
	size_t qn, qcap;
	int drain_req;
	int stop_req;
	/* owned by the worker thread */
	int draining;
	struct backend_ctx bctx;
	struct conn_env env;
	struct fetch_loop fetches; /* cache fills started on this loop */
	struct metrics *metrics;   /* this thread's counters (it alone writes them) */
	TAILQ_HEAD(, worker_slot) conns;
	size_t nconns;
};

struct server {
	const struct config *cfg;
	struct log log;
	struct uri_policy policy;
	struct cloud cloud;
	struct iopool *iopool; /* direct:// reads, for every worker */
	struct crccache *crccache;
	struct cache *cache;     /* remote objects (--cache-mem); NULL: off */
	struct metrics *metrics; /* one per worker */
	struct metrics_http *mhttp;
	struct tokens_registry tokens;
	SSL_CTX *tls;         /* --tls-cert: TCP listeners speak TLS */
	struct event *ev_hup; /* SIGHUP: reload the token file and the log level */
	atomic_int draining;  /* /readyz */
	struct event_base *base;
	struct server_listener *lst;
	size_t nlst;
	struct worker *workers;
	int nworkers;
	int next_worker;
	unsigned long unix_seq; /* names Unix-socket peers in logs */
	struct event *ev_term, *ev_int, *ev_parent, *ev_drain, *ev_done;
	pthread_mutex_t mu; /* guards workers_done */
	int workers_done;
	int stopping;
	int forced;
	int parent_is_ppid;
	sigset_t oldmask; /* before server_new held back SIGTERM and SIGINT */
};

/* ---- workers ---- */

/* A draining worker stops once its connections are gone and the cache fills it runs (which
 * other workers' requests may be waiting on) have ended. */
static void worker_check_done(struct worker *w)
{
	if (w->draining && w->nconns == 0 && !fetch_loop_busy(&w->fetches))
		event_base_loopexit(w->base, NULL);
}

static void worker_fetches_idle(void *arg)
{
	worker_check_done(arg);
}

static void worker_conn_freed(void *owner)
{
	struct worker_slot *slot = owner;
	struct worker *w = slot->w;
	TAILQ_REMOVE(&w->conns, slot, link);
	w->nconns--;
	metrics_gauge(&w->metrics->connections, -1);
	free(slot);
	worker_check_done(w);
}

static void worker_adopt(struct worker *w, const struct worker_item *it)
{
	struct err e;
	struct worker_slot *slot = calloc(1, sizeof(*slot));
	if (!slot) {
		log_write(&w->srv->log, LOGL_ERROR, "conn=%s msg=\"out of memory\"", it->peer);
		close(it->fd);
		return;
	}
	slot->w = w;
	if (conn_new(&w->env, w->base, it->fd, it->peer, it->flags, slot, &slot->c, &e) < 0) {
		char m[512];
		log_write(&w->srv->log, LOGL_ERROR, "conn=%s msg=%s", it->peer,
		          log_value(m, sizeof(m), e.msg, 1));
		free(slot);
		return;
	}
	TAILQ_INSERT_TAIL(&w->conns, slot, link);
	w->nconns++;
	metrics_add(&w->metrics->connections_total, 1);
	metrics_gauge(&w->metrics->connections, 1);
	log_write(&w->srv->log, LOGL_DEBUG, "conn=%s msg=accepted", it->peer);
}

static void worker_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	pthread_mutex_lock(&w->mu);
	struct worker_item *q = w->q;
	size_t qn = w->qn;
	w->q = NULL;
	w->qn = w->qcap = 0;
	int drain = w->drain_req, stop = w->stop_req;
	pthread_mutex_unlock(&w->mu);

	for (size_t i = 0; i < qn; i++) {
		if (stop)
			close(q[i].fd);
		else
			worker_adopt(w, &q[i]); /* when draining, conn_drain below answers it */
	}
	free(q);
	if (stop) {
		while (!TAILQ_EMPTY(&w->conns))
			conn_free(TAILQ_FIRST(&w->conns)->c);
		event_base_loopbreak(w->base);
		return;
	}
	if (drain && (!w->draining || qn)) {
		w->draining = 1;
		struct worker_slot *slot = TAILQ_FIRST(&w->conns);
		while (slot) {
			/* conn_drain never frees synchronously, so the list stays intact */
			struct worker_slot *next = TAILQ_NEXT(slot, link);
			conn_drain(slot->c);
			slot = next;
		}
		worker_check_done(w);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	while (!TAILQ_EMPTY(&w->conns))
		conn_free(TAILQ_FIRST(&w->conns)->c);
	fetch_loop_stop(&w->fetches); /* their waiters are gone or on stopping loops */
	struct server *s = w->srv;
	pthread_mutex_lock(&s->mu);
	s->workers_done++;
	pthread_mutex_unlock(&s->mu);
	event_active(s->ev_done, 0, 0);
	return NULL;
}

static void worker_post(struct worker *w, int drain, int stop)
{
	pthread_mutex_lock(&w->mu);
	w->drain_req |= drain;
	w->stop_req |= stop;
	pthread_mutex_unlock(&w->mu);
	event_active(w->wake, 0, 0);
}

static int worker_init(struct server *s, struct worker *w, struct err *e)
{
	w->srv = s;
	pthread_mutex_init(&w->mu, NULL);
	TAILQ_INIT(&w->conns);
	w->bctx.policy = &s->policy;
	w->bctx.max_frame = s->cfg->max_frame;
	w->bctx.cloud = &s->cloud;
	w->env.log = &s->log;
	w->env.bctx = &w->bctx;
	w->env.max_frame = s->cfg->max_frame;
	w->env.max_in_flight = s->cfg->max_in_flight;
	w->env.idle_timeout = s->cfg->idle_timeout;
	w->env.on_free = worker_conn_freed;
	w->env.metrics = w->metrics;
	w->env.cache = s->cache;
	w->env.fetches = &w->fetches;
	w->env.tokens = &s->tokens;
	w->env.tls = s->tls;
	w->bctx.iopool = s->iopool;
	w->bctx.crccache = s->crccache;
	w->base = event_base_new();
	if (!w->base)
		return err_set(e, WIRE_E_INTERNAL, "cannot create an event loop");
	fetch_loop_init(&w->fetches, w->base, &w->bctx, w->metrics);
	w->fetches.on_idle = worker_fetches_idle;
	w->fetches.idle_arg = w;
	w->wake = event_new(w->base, -1, 0, worker_wake_cb, w);
	if (!w->wake)
		return err_set(e, WIRE_E_INTERNAL, "cannot create an event");
	int rc = iopool_inbox_new(w->base, &w->bctx.inbox, e);
	if (rc < 0)
		return rc;
	return http_new(w->base, &s->cloud.http, &w->bctx.http, e);
}

static void worker_destroy(struct worker *w)
{
	if (w->wake)
		event_free(w->wake);
	/* the pool has stopped: what it completed for us only frees cancelled reads */
	iopool_inbox_free(w->bctx.inbox);
	backend_remote_ctx_free(&w->bctx);
	http_free(w->bctx.http); /* its connections were freed with the loop's conns */
	if (w->base)
		event_base_free(w->base);
	free(w->bctx.scratch);
	for (size_t i = 0; i < w->qn; i++)
		close(w->q[i].fd);
	free(w->q);
	pthread_mutex_destroy(&w->mu);
}

/* ---- accepting ---- */

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104 */
static int server_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
	}
	return 0;
}

static void server_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
	(void)lev;
	struct server_listener *l = arg;
	struct server *s = l->srv;
	struct worker_item it = {.fd = fd};
	if (l->is_tcp) {
		int one = 1;
		/* frames are small headers followed by payload: do not let Nagle hold them */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		char host[NI_MAXHOST], port[NI_MAXSERV];
		it.flags = CONN_PEER_TCP | (server_is_loopback(sa) ? CONN_PEER_LOCAL : 0);
		if (getnameinfo(sa, (socklen_t)salen, host, sizeof(host), port, sizeof(port),
		                NI_NUMERICHOST | NI_NUMERICSERV) == 0)
			snprintf(it.peer, sizeof(it.peer),
			         sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
		else
			snprintf(it.peer, sizeof(it.peer), "tcp?");
	} else {
		it.flags = CONN_PEER_LOCAL;
		snprintf(it.peer, sizeof(it.peer), "unix#%lu", ++s->unix_seq);
	}
	struct worker *w = &s->workers[s->next_worker];
	s->next_worker = (s->next_worker + 1) % s->nworkers;
	pthread_mutex_lock(&w->mu);
	if (w->qn == w->qcap) {
		size_t cap = w->qcap ? w->qcap * 2 : 16;
		struct worker_item *q = realloc(w->q, cap * sizeof(*q));
		if (!q) {
			pthread_mutex_unlock(&w->mu);
			log_write(&s->log, LOGL_ERROR, "conn=%s msg=\"out of memory\"", it.peer);
			close(fd);
			return;
		}
		w->q = q;
		w->qcap = cap;
	}
	w->q[w->qn++] = it;
	pthread_mutex_unlock(&w->mu);
	event_active(w->wake, 0, 0);
}

static void server_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server_listener *l = arg;
	if (l->lev)
		evconnlistener_enable(l->lev);
}

static void server_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct server_listener *l = arg;
	int err = EVUTIL_SOCKET_ERROR();
	char m[256];
	log_write(&l->srv->log, LOGL_ERROR, "listen=%s msg=%s", l->url,
	          log_value(m, sizeof(m), strerror(err), 1));
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		/* the pending connection stays readable: pause rather than spin */
		evconnlistener_disable(lev);
		struct timeval tv = {1, 0};
		evtimer_add(l->retry, &tv);
	}
}

static int server_listen_fd(struct server *s, struct server_listener *l, int fd, struct err *e)
{
	l->srv = s;
	l->lev = evconnlistener_new(s->base, server_accept_cb, l,
	                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!l->lev) {
		close(fd);
		return err_set(e, WIRE_E_INTERNAL, "--listen %s: cannot create a listener", l->url);
	}
	evconnlistener_set_error_cb(l->lev, server_accept_error_cb);
	l->retry = evtimer_new(s->base, server_retry_cb, l);
	if (!l->retry)
		return err_set(e, WIRE_E_INTERNAL, "--listen %s: cannot create a timer", l->url);
	return 0;
}

static int server_listen_tcp(struct server *s, struct server_listener *l, const char *url,
                             struct err *e)
{
	char host[256], port[32];
	const char *hp = url + 6;
	const char *colon = strrchr(hp, ':');
	if (!colon || colon == hp || !colon[1] || strlen(colon + 1) >= sizeof(port) ||
	    (size_t)(colon - hp) >= sizeof(host))
		return err_set(e, WIRE_E_INVALID, "--listen %s: expected tcp://HOST:PORT", url);
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = '\0';
	strcpy(port, colon + 1);
	char *h = host;
	if (h[0] == '[') { /* [v6]:port */
		size_t n = strlen(h);
		if (n < 3 || h[n - 1] != ']')
			return err_set(e, WIRE_E_INVALID, "--listen %s: bad IPv6 address", url);
		h[n - 1] = '\0';
		h++;
	}
	struct addrinfo hints = {0}, *res = NULL;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	int gai = getaddrinfo(h, port, &hints, &res);
	if (gai != 0)
		return err_set(e, WIRE_E_INVALID, "--listen %s: %s", url, gai_strerror(gai));
	int fd = -1, saved = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		            ai->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SERVER_BACKLOG) == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return err_set(e, WIRE_E_IO, "--listen %s: %s", url, strerror(saved));
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char nh[NI_MAXHOST], np[NI_MAXSERV];
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
	    getnameinfo((struct sockaddr *)&ss, sl, nh, sizeof(nh), np, sizeof(np),
	                NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		close(fd);
		return err_set(e, WIRE_E_IO, "--listen %s: cannot read the bound address", url);
	}
	snprintf(l->url, sizeof(l->url), ss.ss_family == AF_INET6 ? "tcp://[%s]:%s" : "tcp://%s:%s",
	         nh, np);
	l->is_tcp = 1;
	return server_listen_fd(s, l, fd, e);
}

static int server_listen_unix(struct server *s, struct server_listener *l, const char *url,
                              struct err *e)
{
	const char *path = url + 7;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (path[0] != '/')
		return err_set(e, WIRE_E_INVALID, "--listen %s: expected unix:///ABSOLUTE/PATH",
		               url);
	if (strlen(path) >= sizeof(sun.sun_path))
		return err_set(e, WIRE_E_INVALID, "--listen %s: path longer than %zu bytes", url,
		               sizeof(sun.sun_path) - 1);
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(e, WIRE_E_IO, "--listen %s: %s", url, strerror(errno));
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			close(fd);
			return err_set(e, WIRE_E_INVALID,
			               "--listen %s: %s exists and is not a socket", url, path);
		}
		/* a socket file nobody answers on is left over from a crash: replace it; one
		 * that answers belongs to a running server */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			close(fd);
			return err_set(e, WIRE_E_IO,
			               "--listen %s: another server is listening there", url);
		}
		unlink(path);
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, SERVER_BACKLOG) < 0) {
		int saved = errno;
		close(fd);
		return err_set(e, WIRE_E_IO, "--listen %s: %s", url, strerror(saved));
	}
	l->unix_path = strdup(path);
	snprintf(l->url, sizeof(l->url), "unix://%s", path);
	if (!l->unix_path) {
		unlink(path);
		close(fd);
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	}
	return server_listen_fd(s, l, fd, e);
}

/* Close the listeners. With take_backlog, first accept the connections the kernel already
 * completed: closing a listening socket resets those, while a connection we hold gets a
 * clean answer (SHUTDOWN, or an orderly close) from its draining worker. */
static void server_close_listeners(struct server *s, int take_backlog)
{
	for (size_t i = 0; i < s->nlst; i++) {
		struct server_listener *l = &s->lst[i];
		if (l->lev && take_backlog) {
			int lfd = evconnlistener_get_fd(l->lev);
			for (int n = 0; n < SERVER_BACKLOG; n++) {
				struct sockaddr_storage ss;
				socklen_t sl = sizeof(ss);
				int fd = accept4(lfd, (struct sockaddr *)&ss, &sl,
				                 SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0)
					break;
				server_accept_cb(l->lev, fd, (struct sockaddr *)&ss, (int)sl, l);
			}
		}
		if (l->lev) {
			evconnlistener_free(l->lev);
			l->lev = NULL;
		}
		if (l->retry) {
			event_free(l->retry);
			l->retry = NULL;
		}
		if (l->unix_path) {
			unlink(l->unix_path);
			free(l->unix_path);
			l->unix_path = NULL;
		}
	}
}

/* ---- stopping ---- */

static void server_force_stop(struct server *s)
{
	if (s->forced)
		return;
	s->forced = 1;
	for (int i = 0; i < s->nworkers; i++)
		worker_post(&s->workers[i], 1, 1);
}

static void server_stop(struct server *s, const char *why)
{
	if (s->stopping) {
		log_write(&s->log, LOGL_WARN, "msg=\"%s again: closing connections now\"", why);
		server_force_stop(s);
		return;
	}
	s->stopping = 1;
	atomic_store(&s->draining, 1);
	log_write(&s->log, LOGL_INFO, "msg=\"stopping (%s): draining for up to %d s\"", why,
	          s->cfg->drain_timeout);
	server_close_listeners(s, 1);
	if (s->ev_parent)
		event_del(s->ev_parent);
	for (int i = 0; i < s->nworkers; i++)
		worker_post(&s->workers[i], 1, 0);
	struct timeval tv = {s->cfg->drain_timeout, 0};
	evtimer_add(s->ev_drain, &tv);
}

static void server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	server_stop(arg, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

/* SIGHUP: read the token file again (connections switch at their next request) and the
 * log level of the --config file. A bad file is logged and the old settings stay. */
static void server_hup_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	struct server *s = arg;
	struct err e;
	char m[WIRE_MAX_MESSAGE + 64];
	if (s->cfg->token_file) {
		if (tokens_reload(&s->tokens, &e) < 0)
			log_write(&s->log, LOGL_ERROR, "msg=%s", log_value(m, sizeof(m), e.msg, 1));
		else
			log_write(&s->log, LOGL_INFO, "msg=\"token file reloaded\" tokens=%zu",
			          s->tokens.cur ? s->tokens.cur->n : (size_t)0);
	}
	if (s->cfg->config_file) {
		int level;
		if (config_reload_log_level(s->cfg->config_file, &level, &e) < 0) {
			log_write(&s->log, LOGL_ERROR, "msg=%s", log_value(m, sizeof(m), e.msg, 1));
		} else if (level >= 0) {
			atomic_store(&s->log.level, level);
			log_write(&s->log, LOGL_INFO, "msg=\"log level set\" log_level=%s",
			          log_level_str(level));
		}
	}
}

static void server_drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server *s = arg;
	log_write(&s->log, LOGL_WARN, "msg=\"drain timeout: closing the remaining connections\"");
	server_force_stop(s);
}

static void server_parent_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server *s = arg;
	pid_t pid = s->cfg->parent_pid;
	int gone = (kill(pid, 0) < 0 && errno == ESRCH) || (s->parent_is_ppid && getppid() != pid);
	if (gone)
		server_stop(s, "parent process exited");
}

static void server_done_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server *s = arg;
	pthread_mutex_lock(&s->mu);
	int done = s->workers_done;
	pthread_mutex_unlock(&s->mu);
	if (done == s->nworkers)
		event_base_loopexit(s->base, NULL);
}

/* ---- life cycle ---- */

int server_new(const struct config *cfg, struct server **out, struct err *e)
{
	int result = 0;
	struct server *s = calloc(1, sizeof(*s));
	if (!s)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	s->cfg = cfg;
	s->log.level = cfg->log_level;
	s->log.json = cfg->log_json;
	uri_policy_init(&s->policy);
	pthread_mutex_init(&s->mu, NULL);
	/* Hold the stop signals from before the first "listening on" line until server_run
	 * has its handlers in place: whoever reads that line may signal us at once, and must
	 * get a clean stop (unix socket removed, exit 0) rather than the default death. Worker
	 * threads inherit the blocked mask and keep it. */
	sigset_t stop_sigs;
	sigemptyset(&stop_sigs);
	sigaddset(&stop_sigs, SIGTERM);
	sigaddset(&stop_sigs, SIGINT);
	sigaddset(&stop_sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &stop_sigs, &s->oldmask);
	if (evthread_use_pthreads() < 0) {
		result = err_set(e, WIRE_E_INTERNAL, "libevent has no pthreads support");
		goto done;
	}
	log_hook_libevent();
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		result = err_set(e, WIRE_E_INTERNAL, "cannot initialise libcurl");
		goto done;
	}
	result = cloud_load(cfg, &s->cloud, e);
	if (result < 0)
		goto done;
	for (size_t i = 0; i < cfg->nallow; i++) {
		result = uri_policy_add(&s->policy, cfg->allow[i], e);
		if (result < 0)
			goto done;
	}
	s->base = event_base_new();
	if (!s->base) {
		result = err_set(e, WIRE_E_INTERNAL, "cannot create an event loop");
		goto done;
	}
	if (cfg->crc_cache && !(s->crccache = crccache_new(cfg->crc_cache))) {
		result = err_set(e, WIRE_E_INTERNAL, "cannot allocate the CRC cache (%zu entries)",
		                 cfg->crc_cache);
		goto done;
	}
	if (cfg->cache_mem) {
		uint64_t max_object =
		    cfg->cache_max_object ? cfg->cache_max_object : cfg->cache_mem / 8;
		s->cache = cache_new(cfg->cache_mem, max_object,
		                     (int64_t)cfg->cache_validate_ms * 1000000);
		if (!s->cache) {
			result = err_set(e, WIRE_E_INTERNAL, "cannot allocate the object cache");
			goto done;
		}
		if (cfg->cache_dir) {
			result = cache_disk_open(s->cache, cfg->cache_dir, cfg->cache_disk, e);
			if (result < 0)
				goto done;
		}
	}
	result = tokens_registry_init(&s->tokens, cfg->token_file, e);
	if (result < 0)
		goto done;
	if (cfg->tls_cert) {
		result = tls_ctx_new(cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, &s->tls, e);
		if (result < 0)
			goto done;
	}
	/* the workers' number is known now: the scrape sums one struct metrics per worker */
	s->nworkers = cfg->threads;
	if (s->nworkers <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		s->nworkers = n > 0 ? (int)n : 1;
	}
	s->metrics = calloc((size_t)s->nworkers, sizeof(*s->metrics));
	if (!s->metrics) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	if (cfg->metrics) {
		/* before the "listening on" lines: whoever waits for those finds this one too */
		struct metrics_sources src = {.m = s->metrics,
		                              .nm = (size_t)s->nworkers,
		                              .cache = s->cache,
		                              .crccache = s->crccache,
		                              .tokens = &s->tokens,
		                              .draining = &s->draining};
		result = metrics_http_new(s->base, cfg->metrics, &src, &s->mhttp, e);
		if (result < 0)
			goto done;
	}
	s->lst = calloc(cfg->nlisten, sizeof(*s->lst));
	if (!s->lst) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < cfg->nlisten; i++) {
		struct server_listener *l = &s->lst[s->nlst];
		const char *url = cfg->listen[i];
		if (strncmp(url, "tcp://", 6) == 0)
			result = server_listen_tcp(s, l, url, e);
		else
			result = server_listen_unix(s, l, url, e);
		if (l->lev || l->unix_path)
			s->nlst++; /* partly set up: still closed (and unlinked) at free */
		if (result < 0)
			goto done;
		/* tests and the Python package parse this exact line */
		dprintf(STDERR_FILENO, "s3dliod: listening on %s\n", l->url);
	}
	*out = s;
	s = NULL;
done:
	if (s)
		server_free(s);
	return result;
}

int server_run(struct server *s, struct err *e)
{
	int result = 0;
	const struct config *cfg = s->cfg;
	signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error return, not a death */

	s->workers = calloc((size_t)s->nworkers, sizeof(*s->workers));
	s->ev_term = evsignal_new(s->base, SIGTERM, server_signal_cb, s);
	s->ev_int = evsignal_new(s->base, SIGINT, server_signal_cb, s);
	s->ev_hup = evsignal_new(s->base, SIGHUP, server_hup_cb, s);
	s->ev_drain = evtimer_new(s->base, server_drain_timeout_cb, s);
	s->ev_done = event_new(s->base, -1, 0, server_done_cb, s);
	if (!s->workers || !s->ev_term || !s->ev_int || !s->ev_hup || !s->ev_drain || !s->ev_done ||
	    evsignal_add(s->ev_term, NULL) < 0 || evsignal_add(s->ev_int, NULL) < 0 ||
	    evsignal_add(s->ev_hup, NULL) < 0) {
		result = err_set(e, WIRE_E_INTERNAL, "cannot set up the main event loop");
		goto done;
	}
	if (cfg->parent_pid > 0) {
		s->parent_is_ppid = getppid() == cfg->parent_pid;
		s->ev_parent = event_new(s->base, -1, EV_PERSIST, server_parent_cb, s);
		struct timeval tv = {1, 0};
		if (!s->ev_parent || event_add(s->ev_parent, &tv) < 0) {
			result = err_set(e, WIRE_E_INTERNAL, "cannot set up the parent watch");
			goto done;
		}
	}
	/* started while SIGTERM and SIGINT are still held back, so its threads keep them so */
	result = iopool_new(cfg->direct_threads, &s->iopool, e);
	if (result < 0)
		goto done;
	for (int i = 0; i < s->nworkers; i++) {
		s->workers[i].metrics = &s->metrics[i];
		result = worker_init(s, &s->workers[i], e);
		if (result < 0)
			goto done;
	}
	for (int i = 0; i < s->nworkers; i++) {
		if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
			result = err_set(e, WIRE_E_INTERNAL, "cannot start worker thread %d", i);
			goto done;
		}
		s->workers[i].started = 1;
	}
	/* handlers are in place: a stop signal that came early is delivered now */
	pthread_sigmask(SIG_SETMASK, &s->oldmask, NULL);

	if (s->policy.n == 0)
		log_write(&s->log, LOGL_WARN,
		          "msg=\"no --allow prefix given: every request will be refused\"");
	for (size_t i = 0; i < s->policy.n; i++)
		log_write(&s->log, LOGL_INFO, "allow=%s", s->policy.v[i].text);
	log_write(
	    &s->log, LOGL_INFO,
	    "msg=started version=%s threads=%d direct_threads=%d max_frame=%u max_in_flight=%u "
	    "idle_timeout=%d",
	    CONFIG_VERSION, s->nworkers, cfg->direct_threads, cfg->max_frame, cfg->max_in_flight,
	    cfg->idle_timeout);
	event_base_loop(s->base, EVLOOP_NO_EXIT_ON_EMPTY);
done:
	if (s->workers) {
		for (int i = 0; i < s->nworkers; i++)
			if (s->workers[i].started)
				worker_post(&s->workers[i], 1, 1); /* no-op after a clean drain */
		for (int i = 0; i < s->nworkers; i++)
			if (s->workers[i].started)
				pthread_join(s->workers[i].thread, NULL);
	}
	if (result == 0)
		log_write(&s->log, LOGL_INFO, "msg=stopped");
	return result;
}

void server_free(struct server *s)
{
	if (!s)
		return;
	server_close_listeners(s, 0);
	free(s->lst);
	/* finishes the reads still queued; their completions wait in the workers' inboxes */
	iopool_free(s->iopool);
	if (s->workers) {
		for (int i = 0; i < s->nworkers; i++)
			worker_destroy(&s->workers[i]);
		free(s->workers);
	}
	metrics_http_free(s->mhttp);
	free(s->metrics); /* after the workers and the endpoint: nobody counts any more */
	crccache_free(s->crccache);
	cache_free(s->cache); /* after the workers: no reply sends from it any more */
	if (s->ev_term)
		event_free(s->ev_term);
	if (s->ev_int)
		event_free(s->ev_int);
	if (s->ev_hup)
		event_free(s->ev_hup);
	if (s->ev_parent)
		event_free(s->ev_parent);
	if (s->ev_drain)
		event_free(s->ev_drain);
	if (s->ev_done)
		event_free(s->ev_done);
	if (s->base)
		event_base_free(s->base);
	uri_policy_free(&s->policy);
	tokens_registry_free(&s->tokens); /* after the workers: no connection holds a table */
	tls_ctx_free(s->tls);
	cloud_free(&s->cloud);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
