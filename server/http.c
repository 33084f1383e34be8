/* http.c: libcurl's multi interface on a libevent loop, with retries (see http.h).
 *
 * The glue is the classic one (curl's hiper-fifo example): libcurl tells us which sockets to
 * watch (socket callback) and when to wake it (timer callback); libevent calls back into
 * curl_multi_socket_action; finished transfers are collected with curl_multi_info_read.
 * Connections stay in the multi handle's cache, so requests to one endpoint reuse them. */
#include "http.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_MAX_EBODY 4096
#define HTTP_MAX_HDRS (64u << 10)
#define HTTP_STALL_SECS 30 /* a streamed body making no progress for this long fails */

struct http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct http_settings s;
	unsigned rnd; /* jitter */
};

struct http_sock {
	struct http *h;
	curl_socket_t fd;
	struct event *ev;
};

static void http_check(struct http *h);

static void http_event_cb(evutil_socket_t fd, short kind, void *arg)
{
	struct http *h = arg;
	int running, action = 0;
	if (kind & EV_READ)
		action |= CURL_CSELECT_IN;
	if (kind & EV_WRITE)
		action |= CURL_CSELECT_OUT;
	curl_multi_socket_action(h->multi, fd, action, &running);
	http_check(h);
}

static int http_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	(void)easy;
	struct http *h = userp;
	struct http_sock *hs = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (hs) {
			event_free(hs->ev);
			free(hs);
			curl_multi_assign(h->multi, fd, NULL);
		}
		return 0;
	}
	if (!hs) {
		hs = calloc(1, sizeof(*hs));
		if (!hs)
			return -1;
		hs->h = h;
		hs->fd = fd;
		curl_multi_assign(h->multi, fd, hs);
	} else {
		event_free(hs->ev);
	}
	short kind = EV_PERSIST;
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	hs->ev = event_new(h->base, fd, kind, http_event_cb, h);
	if (!hs->ev)
		return -1;
	event_add(hs->ev, NULL);
	return 0;
}

static void http_timeout_cb(evutil_socket_t fd, short kind, void *arg)
{
	(void)fd;
	(void)kind;
	struct http *h = arg;
	int running;
	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	http_check(h);
}

static int http_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	(void)multi;
	struct http *h = userp;
	if (timeout_ms < 0) {
		evtimer_del(h->timer);
		return 0;
	}
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	evtimer_add(h->timer, &tv);
	return 0;
}

int http_new(struct event_base *base, const struct http_settings *s, struct http **out,
             struct err *e)
{
	struct http *h = calloc(1, sizeof(*h));
	if (!h)
		return err_set(e, WIRE_E_INTERNAL, "http: out of memory");
	h->base = base;
	h->s = *s;
	h->rnd = (unsigned)(uintptr_t)h ^ 0x9e3779b9u;
	h->multi = curl_multi_init();
	h->timer = evtimer_new(base, http_timeout_cb, h);
	if (!h->multi || !h->timer) {
		http_free(h);
		return err_set(e, WIRE_E_INTERNAL, "http: cannot create a curl multi handle");
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, http_sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, http_timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 64L);
	*out = h;
	return 0;
}

void http_free(struct http *h)
{
	if (!h)
		return;
	if (h->multi)
		curl_multi_cleanup(h->multi);
	if (h->timer)
		event_free(h->timer);
	free(h);
}

/* ---- one call ---- */

static size_t http_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_call *c = arg;
	size_t n = size * nmemb;
	if (c->cancelled)
		return 0;
	if (!c->status)
		curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
	if (c->status >= 200 && c->status < 300)
		return c->on_body ? c->on_body(c, p, n) : n;
	/* an error answer: keep the start of its body for the message */
	size_t room = HTTP_MAX_EBODY - c->ebody_len;
	size_t take = n < room ? n : room;
	if (!c->ebody)
		c->ebody = malloc(HTTP_MAX_EBODY + 1);
	if (c->ebody && take) {
		memcpy(c->ebody + c->ebody_len, p, take);
		c->ebody_len += take;
		c->ebody[c->ebody_len] = '\0';
	}
	return n;
}

static size_t http_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_call *c = arg;
	size_t n = size * nmemb;
	if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
		c->hdrs_len = 0; /* a new response (after 100 Continue, a redirect) */
		c->status = 0;
		return n;
	}
	if (c->hdrs_len + n + 1 > c->hdrs_cap) {
		size_t cap = c->hdrs_cap ? c->hdrs_cap * 2 : 1024;
		while (cap < c->hdrs_len + n + 1)
			cap *= 2;
		if (cap > HTTP_MAX_HDRS)
			return n; /* ignore the excess */
		char *v = realloc(c->hdrs, cap);
		if (!v)
			return 0;
		c->hdrs = v;
		c->hdrs_cap = cap;
	}
	memcpy(c->hdrs + c->hdrs_len, p, n);
	c->hdrs_len += n;
	c->hdrs[c->hdrs_len] = '\0';
	return n;
}

int http_header(struct http_call *c, const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	struct curl_slist *l = curl_slist_append(c->headers, line);
	if (!l)
		return -1;
	c->headers = l;
	return 0;
}

int http_resp_header(const struct http_call *c, const char *name, char *buf, size_t cap)
{
	size_t nlen = strlen(name);
	const char *p = c->hdrs;
	if (!p)
		return -1;
	while (*p) {
		const char *eol = strstr(p, "\r\n");
		if (!eol)
			eol = p + strlen(p);
		if ((size_t)(eol - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
			const char *v = p + nlen + 1;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			const char *end = eol;
			while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
				end--;
			size_t len = (size_t)(end - v);
			if (len >= cap)
				return -1;
			memcpy(buf, v, len);
			buf[len] = '\0';
			return 0;
		}
		p = *eol ? eol + 2 : eol;
	}
	return -1;
}

int http_status_retryable(long status)
{
	return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

static int http_curl_retryable(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM: return 1;
	default: return 0;
	}
}

static int http_attempt(struct http_call *c, struct err *e)
{
	struct http *h = c->h;
	if (!c->easy && !(c->easy = curl_easy_init()))
		return err_set(e, WIRE_E_INTERNAL, "http: out of memory");
	CURL *easy = c->easy;
	curl_easy_reset(easy);
	curl_slist_free_all(c->headers);
	c->headers = NULL;
	c->status = 0;
	c->hdrs_len = 0;
	c->ebody_len = 0;
	c->errbuf[0] = '\0';
	curl_easy_setopt(easy, CURLOPT_PRIVATE, c);
	/* send the path as built: never let libcurl resolve "." or ".." segments of a key */
	curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, http_header_cb);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, h->s.connect_timeout_ms);
	if (c->streaming) {
		curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, (long)HTTP_STALL_SECS);
	} else if (h->s.op_timeout_ms > 0) {
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, h->s.op_timeout_ms);
	}
	/* "Expect: 100-continue" costs a round trip per large upload; an "Expect:" header
	 * would end up in the SigV4 signed headers (libcurl signs its header list), so keep
	 * the wait short instead */
	curl_easy_setopt(easy, CURLOPT_EXPECT_100_TIMEOUT_MS, 200L);
	int rc = c->setup(c, easy, e);
	if (rc < 0)
		return rc;
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, c->headers);
	if (curl_multi_add_handle(h->multi, easy) != CURLM_OK)
		return err_set(e, WIRE_E_INTERNAL, "http: cannot start a transfer");
	c->active = 1;
	return 0;
}

int http_start(struct http *h, struct http_call *c, struct err *e)
{
	c->h = h; /* attempt counts on: a caller resuming a body keeps the count */
	c->cancelled = 0;
	return http_attempt(c, e);
}

static void http_finish(struct http_call *c, int rc, const struct err *e)
{
	c->on_done(c, rc, e);
}

static void http_retry_cb(evutil_socket_t fd, short kind, void *arg)
{
	(void)fd;
	(void)kind;
	struct http_call *c = arg;
	struct err e;
	int rc = http_attempt(c, &e);
	if (rc < 0)
		http_finish(c, rc, &e);
}

static void http_retry_later(struct http_call *c)
{
	struct http *h = c->h;
	long cap = h->s.backoff_ms * 32;
	long d = h->s.backoff_ms << (c->attempt < 5 ? c->attempt : 5);
	if (d > cap)
		d = cap;
	h->rnd = h->rnd * 1103515245u + 12345u;
	d = d / 2 + (long)((h->rnd >> 8) % (unsigned)(d / 2 + 1)); /* jitter: [d/2, d] */
	c->attempt++;
	if (!c->timer)
		c->timer = evtimer_new(h->base, http_retry_cb, c);
	struct timeval tv = {d / 1000, (d % 1000) * 1000};
	if (!c->timer || evtimer_add(c->timer, &tv) < 0) {
		struct err e;
		err_set(&e, WIRE_E_INTERNAL, "http: cannot schedule a retry");
		http_finish(c, -WIRE_E_INTERNAL, &e);
	}
}

static void http_check(struct http *h)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(h->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		CURL *easy = m->easy_handle;
		CURLcode rc = m->data.result;
		struct http_call *c = NULL;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&c);
		curl_multi_remove_handle(h->multi, easy);
		c->active = 0;
		if (c->cancelled)
			continue; /* its owner has let go of it */
		c->curl_rc = rc;
		if (rc == CURLE_OK)
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &c->status);
		int again =
		    rc == CURLE_OK ? http_status_retryable(c->status) : http_curl_retryable(rc);
		if (again && !c->no_retry && c->attempt < h->s.retries) {
			http_retry_later(c);
			continue;
		}
		if (rc != CURLE_OK) {
			struct err e;
			uint32_t code =
			    rc == CURLE_OPERATION_TIMEDOUT ? WIRE_E_TIMEOUT : WIRE_E_BACKEND;
			err_set(&e, code, "%s (after %d attempts)",
			        c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc), c->attempt + 1);
			http_finish(c, -(int)code, &e);
		} else {
			http_finish(c, 0, NULL);
		}
	}
}

void http_cancel(struct http_call *c)
{
	if (c->timer) {
		event_free(c->timer);
		c->timer = NULL;
	}
	if (c->active && c->h)
		curl_multi_remove_handle(c->h->multi, c->easy);
	c->active = 0;
	c->cancelled = 1;
	if (c->easy)
		curl_easy_cleanup(c->easy);
	c->easy = NULL;
	curl_slist_free_all(c->headers);
	c->headers = NULL;
	free(c->hdrs);
	free(c->ebody);
	c->hdrs = c->ebody = NULL;
	c->hdrs_len = c->hdrs_cap = c->ebody_len = 0;
}

void http_pause(struct http_call *c, int pause)
{
	if (c->active && c->easy)
		curl_easy_pause(c->easy, pause ? CURLPAUSE_RECV : CURLPAUSE_CONT);
}

int http_encode(const char *s, size_t len, int keep_slash, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~' ||
		    (keep_slash && ch == '/')) {
			if (o + 1 >= cap)
				return -1;
			out[o++] = (char)ch;
		} else {
			if (o + 3 >= cap)
				return -1;
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
	}
	out[o] = '\0';
	return 0;
}
