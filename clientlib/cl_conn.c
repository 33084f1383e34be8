/* cl_conn.c: one connection to s3dliod.
 *
 * Owns URL parsing (tcp://HOST:PORT, tcp://[V6]:PORT, unix:///PATH), the non-blocking connect
 * bounded by connect_timeout_ms, and the HELLO/WELCOME handshake. Sockets stay non-blocking for
 * their whole life: the engine multiplexes them with poll(). Writes use MSG_NOSIGNAL (or
 * SO_NOSIGPIPE where that exists) so a dead server never raises SIGPIPE. */
#include "cl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

int cl_conn_parse_url(s3dlio_client *c, const char *url, s3dlio_error *err)
{
	if (!url || !*url) {
		cl_err(err, S3DLIO_E_INVALID,
		       "no server URL given (tcp://HOST:PORT or unix:///PATH)");
		return S3DLIO_E_INVALID;
	}
	if (strncmp(url, "unix://", 7) == 0) {
		const char *p = url + 7;
		struct sockaddr_un sun;
		if (*p != '/' || strlen(p) >= sizeof(sun.sun_path)) {
			cl_err(
			    err, S3DLIO_E_INVALID,
			    "%s: a Unix socket URL needs an absolute path shorter than %zu bytes "
			    "(unix:///PATH)",
			    url, sizeof(sun.sun_path));
			return S3DLIO_E_INVALID;
		}
		c->is_unix = 1;
		c->path = strdup(p);
		return c->path ? 0 : S3DLIO_E_NOMEM;
	}
	if (strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tls://", 6) == 0) {
		const char *h = url + 6, *hend, *colon;
		if (*h == '[') {
			hend = strchr(h, ']');
			if (!hend || hend[1] != ':')
				goto bad_tcp;
			colon = hend + 1;
			h++;
		} else {
			colon = strrchr(h, ':');
			if (!colon)
				goto bad_tcp;
			hend = colon;
		}
		const char *port = colon + 1;
		if (hend == h || !*port || strspn(port, "0123456789") != strlen(port) ||
		    strlen(port) > 5 || atoi(port) > 65535 || atoi(port) == 0)
			goto bad_tcp;
		c->is_unix = 0;
		c->host = strndup(h, (size_t)(hend - h));
		c->port = strdup(port);
		return c->host && c->port ? 0 : S3DLIO_E_NOMEM;
	bad_tcp:
		cl_err(err, S3DLIO_E_INVALID, "%s: expected %.6sHOST:PORT", url, url);
		return S3DLIO_E_INVALID;
	}
	cl_err(err, S3DLIO_E_INVALID,
	       "%s: unknown server URL scheme (tcp://HOST:PORT, tls://HOST:PORT or unix:///PATH)",
	       url);
	return S3DLIO_E_INVALID;
}

static int ms_left(uint64_t deadline)
{
	uint64_t now = cl_now_ms();
	return now >= deadline ? 0 : (int)(deadline - now > 60000000 ? 60000000 : deadline - now);
}

static int set_socket_options(int fd, int tcp)
{
	int one = 1;
	if (tcp && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		return -1;
	if (tcp)
		(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef SO_NOSIGPIPE
	(void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#endif
	return 0;
}

/* Connect fd to addr, waiting at most until deadline. Returns 0 or an errno value. */
static int connect_wait(int fd, const struct sockaddr *addr, socklen_t alen, uint64_t deadline)
{
	for (;;) {
		if (connect(fd, addr, alen) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* a Unix socket whose backlog is full: try again shortly */
			if (!ms_left(deadline))
				return ETIMEDOUT;
			struct pollfd none = {.fd = -1};
			(void)poll(&none, 0, 5);
			continue;
		}
		if (errno != EINPROGRESS)
			return errno;
		break;
	}
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int left = ms_left(deadline);
		if (!left)
			return ETIMEDOUT;
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0)
			return ETIMEDOUT;
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			return errno;
		return soerr;
	}
}

static int open_socket(s3dlio_client *c, uint64_t deadline, int *out, s3dlio_error *err)
{
	if (c->is_unix) {
		struct sockaddr_un sun;
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		memcpy(sun.sun_path, c->path, strlen(c->path) + 1);
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			cl_err(err, S3DLIO_E_CONNECTION, "cannot connect to %s: socket: %s", c->url,
			       strerror(errno));
			return S3DLIO_E_CONNECTION;
		}
		int e = connect_wait(fd, (struct sockaddr *)&sun, sizeof(sun), deadline);
		if (e || set_socket_options(fd, 0) < 0) {
			if (!e)
				e = errno;
			close(fd);
			cl_err(err, e == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION,
			       "cannot connect to %s: %s", c->url, strerror(e));
			return e == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION;
		}
		*out = fd;
		return 0;
	}

	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_ADDRCONFIG;
	int g = getaddrinfo(c->host, c->port, &hints, &res);
	if (g) {
		cl_err(err, S3DLIO_E_CONNECTION, "cannot connect to %s: cannot resolve %s: %s",
		       c->url, c->host, g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
		return S3DLIO_E_CONNECTION;
	}
	int e = ECONNREFUSED;
	int fd = -1;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		            ai->ai_protocol);
		if (fd < 0) {
			e = errno;
			continue;
		}
		e = connect_wait(fd, ai->ai_addr, ai->ai_addrlen, deadline);
		if (!e && set_socket_options(fd, 1) < 0)
			e = errno;
		if (!e)
			break;
		close(fd);
		fd = -1;
		if (e == ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		int code = e == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION;
		cl_err(err, code, "cannot connect to %s: %s", c->url, strerror(e));
		return code;
	}
	*out = fd;
	return 0;
}

/* Send all of buf before the deadline. Returns 0 or an errno value. */
static int send_all(struct cl_conn *cn, const uint8_t *buf, size_t len, uint64_t deadline)
{
	while (len) {
		struct iovec iov = {(void *)buf, len};
		ssize_t n = cl_conn_sendv(cn, &iov, 1);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return errno;
		struct pollfd p = {.fd = cn->fd, .events = POLLOUT};
		int left = ms_left(deadline);
		if (!left || poll(&p, 1, left) == 0)
			return ETIMEDOUT;
	}
	return 0;
}

/* *retry_ms: set when the server refused with BUSY (its tenant's connection limit). */
static int handshake(s3dlio_client *c, struct cl_conn *cn, uint64_t deadline, uint32_t *retry_ms,
                     s3dlio_error *err)
{
	uint8_t hello[WIRE_MAX_TOKEN + 512];
	struct wire_frame f;
	size_t len = 0;
	wire_frame_init(&f, WIRE_HELLO, 0);
	f.version = WIRE_VERSION;
	if (c->token) {
		f.token = c->token;
		f.token_len = (uint32_t)strlen(c->token);
	}
	f.agent = CL_AGENT;
	f.agent_len = (uint32_t)strlen(CL_AGENT);
	int r = wire_encode(&f, hello, sizeof(hello), &len);
	if (r != WIRE_OK) {
		cl_err(err, S3DLIO_E_INVALID, "cannot connect to %s: HELLO: %s (token too long?)",
		       c->url, wire_result_str(r));
		return S3DLIO_E_INVALID;
	}
	int e = send_all(cn, hello, len, deadline);
	if (e) {
		int code = e == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION;
		cl_err(err, code, "cannot connect to %s: sending HELLO: %s", c->url, strerror(e));
		return code;
	}

	/* Nothing but WELCOME (or ERROR) comes before our first request. */
	size_t used = 0;
	for (;;) {
		r = wire_decode(cn->stage, cn->stage_len, 0, &f, &used);
		if (r == WIRE_OK)
			break;
		if (r != WIRE_NEED_MORE) {
			cl_err(err, S3DLIO_E_PROTOCOL,
			       "cannot connect to %s: bad reply to HELLO: %s", c->url,
			       wire_result_str(r));
			return S3DLIO_E_PROTOCOL;
		}
		struct iovec iov = {cn->stage + cn->stage_len, CL_STAGE_SIZE - cn->stage_len};
		ssize_t n = cl_conn_readv(cn, &iov, 1);
		if (n > 0) {
			cn->stage_len += (size_t)n;
			continue;
		}
		/* a TLS server drops a plain HELLO: say what may be wrong */
		const char *hint = c->tls || c->is_unix
		                       ? ""
		                       : " (if the server speaks TLS: use tls://HOST:PORT, or set "
		                         "S3DLIO_CA_BUNDLE)";
		if (n == 0) {
			cl_err(err, S3DLIO_E_CONNECTION,
			       "cannot connect to %s: the server closed the connection during HELLO%s",
			       c->url, hint);
			return S3DLIO_E_CONNECTION;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			cl_err(err, S3DLIO_E_CONNECTION, "cannot connect to %s: %s%s", c->url,
			       strerror(errno), errno == ECONNRESET ? hint : "");
			return S3DLIO_E_CONNECTION;
		}
		struct pollfd p = {.fd = cn->fd, .events = POLLIN};
		int left = ms_left(deadline);
		if (!left || poll(&p, 1, left) == 0) {
			cl_err(err, S3DLIO_E_TIMEOUT,
			       "cannot connect to %s: no WELCOME within %u ms", c->url,
			       c->connect_timeout_ms);
			return S3DLIO_E_TIMEOUT;
		}
	}
	if (f.type == WIRE_ERROR) {
		int code = cl_map_wire_code(f.code);
		if (code == S3DLIO_E_BUSY)
			*retry_ms = f.retry_ms ? f.retry_ms : 100;
		else if (code == S3DLIO_E_CANCELLED)
			code = S3DLIO_E_CONNECTION;
		cl_err(err, code, "%s refused the connection: %.*s", c->url, (int)f.message_len,
		       f.message ? f.message : "");
		return code;
	}
	if (f.type != WIRE_WELCOME) {
		cl_err(err, S3DLIO_E_PROTOCOL,
		       "cannot connect to %s: the server answered HELLO with %s", c->url,
		       wire_type_str(f.type));
		return S3DLIO_E_PROTOCOL;
	}
	if (f.version != WIRE_VERSION) {
		cl_err(
		    err, S3DLIO_E_PROTOCOL,
		    "cannot connect to %s: the server speaks protocol version %u, this client %u",
		    c->url, f.version, WIRE_VERSION);
		return S3DLIO_E_PROTOCOL;
	}
	cn->max_frame = f.max_frame ? f.max_frame : WIRE_DEFAULT_FRAME;
	if (cn->max_frame > WIRE_MAX_FRAME_CAP)
		cn->max_frame = WIRE_MAX_FRAME_CAP;
	cn->max_in_flight = f.max_in_flight;
	/* anything past WELCOME stays in staging: the engine reads it as a stray frame */
	cn->stage_off = used;
	if (cn->stage_off == cn->stage_len)
		cn->stage_off = cn->stage_len = 0;
	return 0;
}

int cl_conn_open(s3dlio_client *c, int patient, struct cl_conn **out, s3dlio_error *err)
{
	int result = S3DLIO_E_NOMEM;
	uint64_t deadline = cl_now_ms() + c->connect_timeout_ms;
	struct cl_conn *cn = calloc(1, sizeof(*cn));
	if (!cn || !(cn->stage = malloc(CL_STAGE_SIZE))) {
		cl_err(err, S3DLIO_E_NOMEM, "cannot connect to %s: out of memory", c->url);
		goto done;
	}
	cn->fd = -1;
	cn->next_id = 1;
	cn->rd_hint = 4096; /* see cl_engine.c: the first reply may well be a large object */
	for (;;) {
		uint32_t retry_ms = 0;
		result = open_socket(c, deadline, &cn->fd, err);
		if (result)
			goto done;
		if (c->tls) {
			result = cl_tls_connect(c, cn, deadline, err);
			if (result)
				goto done;
		}
		result = handshake(c, cn, deadline, &retry_ms, err);
		if (result != S3DLIO_E_BUSY || !patient)
			break;
		/* the tenant has all the connections it may: wait as told, while time is left */
		int left = ms_left(deadline);
		if ((uint64_t)left <= retry_ms)
			goto done;
		cl_tls_close(cn);
		close(cn->fd);
		cn->fd = -1;
		cn->stage_off = cn->stage_len = 0;
		poll(NULL, 0, (int)retry_ms);
	}
	if (result)
		goto done;
	CL_STAT_ADD(c, connects, 1);
	*out = cn;
	cn = NULL;
done:
	if (cn)
		cl_conn_close(cn);
	return result;
}

void cl_conn_close(struct cl_conn *cn)
{
	if (!cn)
		return;
	cl_tls_close(cn);
	if (cn->fd >= 0)
		close(cn->fd);
	free(cn->stage);
	free(cn);
}

int cl_conn_idle_ok(struct cl_conn *cn)
{
	if (cn->stage_off != cn->stage_len)
		return 0;
	struct pollfd p = {.fd = cn->fd, .events = POLLIN};
	int r;
	do
		r = poll(&p, 1, 0);
	while (r < 0 && errno == EINTR);
	/* readable while idle means EOF, an error, or bytes nobody asked for: all unusable;
	 * except, with TLS, records that carry no data (session tickets) */
	if (r > 0 && cn->ssl && !(p.revents & (POLLERR | POLLHUP)))
		return cl_tls_idle_ok(cn);
	return r == 0;
}
