/* http.h: HTTP for the remote backends: one libcurl multi handle per worker thread, driven
 * by that thread's libevent loop (no thread per request), with retries.
 *
 * A backend embeds a struct http_call in its operation, fills the callbacks and calls
 * http_start. Before every attempt http calls setup() so the backend (re)builds the URL,
 * headers and body (a retried GET resumes where the bytes stopped). Response bodies of 2xx
 * answers go to on_body as they arrive; other bodies are kept (bounded) for the error
 * message. on_done runs once, after the last attempt, outside any libcurl callback, so it
 * may start or cancel other calls. After http_cancel no callback runs.
 *
 * Retried: connection errors, timeouts, 429, 500, 502, 503 (SlowDown), 504; capped
 * exponential backoff with full jitter. Nothing else (a 4xx will not change). */
#ifndef S3DLIOD_HTTP_H
#define S3DLIOD_HTTP_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct event_base;
struct http;

struct http_settings {
	long connect_timeout_ms;
	long op_timeout_ms; /* whole request, except streamed GET bodies (stall limit instead) */
	int retries;        /* attempts after the first */
	long backoff_ms;    /* first retry delay; doubles, capped at 32x */
};

struct http_call {
	/* filled by the backend */
	void *arg;
	int streaming; /* a GET body: no whole-request timeout, a stall limit instead */
	int no_retry;  /* a streamed upload: its bytes cannot be sent again */
	int (*setup)(struct http_call *c, CURL *easy, struct err *e);
	/* bytes of a 2xx body; return n to go on, 0 to abort the transfer */
	size_t (*on_body)(struct http_call *c, const char *p, size_t n);
	/* rc 0: an HTTP answer came (status set, any status); else -WIRE_E_* with e */
	void (*on_done)(struct http_call *c, int rc, const struct err *e);
	/* the outcome, valid in on_done */
	long status;
	CURLcode curl_rc;
	char *hdrs; /* response headers of the last attempt, "name: value\r\n"... */
	size_t hdrs_len, hdrs_cap;
	char *ebody; /* a non-2xx body, NUL-terminated, bounded */
	size_t ebody_len;
	int attempt;
	/* private */
	struct http *h;
	CURL *easy;
	struct curl_slist *headers; /* setup() appends here; freed before each attempt */
	struct event *timer;
	int active;    /* in the multi handle */
	int cancelled; /* cancelled from inside one of its own callbacks */
	char errbuf[CURL_ERROR_SIZE];
};

int http_new(struct event_base *base, const struct http_settings *s, struct http **out,
             struct err *e);
void http_free(struct http *h);

/* Start (attempts count from c->attempt, 0 for a zeroed call). On failure nothing runs
 * later. */
int http_start(struct http *h, struct http_call *c, struct err *e);
/* Stop it; no callback runs afterwards. Frees the curl handle. Safe on a call never started. */
void http_cancel(struct http_call *c);
/* Pause or resume receiving (backpressure of a streamed body). */
void http_pause(struct http_call *c, int pause);

/* Add a request header ("Name: value") for this attempt; -1 when out of memory. */
int http_header(struct http_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The value of a response header (case-insensitive name) copied into buf; 0 or -1. */
int http_resp_header(const struct http_call *c, const char *name, char *buf, size_t cap);

/* Percent-encode s (RFC 3986 unreserved kept; '/' kept when keep_slash). -1: too long. */
int http_encode(const char *s, size_t len, int keep_slash, char *out, size_t cap);

/* A status that may change if asked again. */
int http_status_retryable(long status);

#endif
