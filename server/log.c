/* log.c: stderr logging, one write(2) per line (see log.h). */
#include "log.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *log_level_str(int level)
{
	if (level < 0 || level > LOGL_DEBUG)
		return "unknown";
	return level_names[level];
}

int log_level_parse(const char *s, int *level)
{
	for (int i = 0; i <= LOGL_DEBUG; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*level = i;
			return 0;
		}
	}
	if (strcmp(s, "warning") == 0) {
		*level = LOGL_WARN;
		return 0;
	}
	return -1;
}

static void log_emit(int level, const char *fmt, va_list ap)
{
	char line[4096];
	int n = snprintf(line, sizeof(line), "s3dliod: level=%s ", log_level_str(level));
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2; /* cut long lines but keep the newline */
	line[len++] = '\n';
	/* one write so concurrent lines stay whole; a failed log write has nowhere to go */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

/* Append c to out (JSON string escaping), keeping room for the closing bytes. */
static size_t log_json_char(char *out, size_t o, size_t cap, unsigned char c)
{
	char esc[8];
	size_t n;
	if (c == '"' || c == '\\') {
		esc[0] = '\\';
		esc[1] = (char)c;
		n = 2;
	} else if (c == '\n') {
		memcpy(esc, "\\n", 2);
		n = 2;
	} else if (c < 0x20 || c == 0x7f) {
		snprintf(esc, sizeof(esc), "\\u%04x", c);
		n = 6;
	} else {
		esc[0] = (char)c;
		n = 1;
	}
	if (o + n + 4 >= cap)
		return o;
	memcpy(out + o, esc, n);
	return o + n;
}

static int log_hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

size_t log_kv_to_json(const char *kv, int level, char *out, size_t cap)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n =
	    snprintf(out, cap, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"",
	             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	             ts.tv_nsec / 1000000, log_level_str(level));
	if (cap < 64) {
		if (cap)
			out[0] = '\0';
		return 0;
	}
	/* everything below stays under lim; the unchecked quotes, separators and the closing
	 * brace of one field fit in the 16 bytes above it */
	size_t lim = cap - 16;
	size_t o = n < 0 ? 0 : (size_t)n >= lim ? lim : (size_t)n;
	const char *p = kv;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *eq = strchr(p, '=');
		const char *sp = strchr(p, ' ');
		if (!eq || (sp && sp < eq))
			eq = NULL; /* a word without '=': part of a "text" field */
		if (o + 8 >= lim)
			break;
		out[o++] = ',';
		out[o++] = '"';
		const char *key_end = eq ? eq : p;
		if (!eq) {
			memcpy(out + o, "text", 4);
			o += 4;
		}
		for (const char *k = p; k < key_end; k++)
			o = log_json_char(out, o, lim, (unsigned char)*k);
		out[o++] = '"';
		out[o++] = ':';
		const char *v = eq ? eq + 1 : p;
		if (*v == '"') {
			out[o++] = '"';
			for (v++; *v && *v != '"'; v++) {
				unsigned char c = (unsigned char)*v;
				if (c == '\\' && v[1] == 'n') {
					c = '\n';
					v++;
				} else if (c == '\\' && v[1] == 'x' && log_hexval(v[2]) >= 0 &&
				           log_hexval(v[3]) >= 0) {
					c = (unsigned char)(log_hexval(v[2]) * 16 +
					                    log_hexval(v[3]));
					v += 3;
				} else if (c == '\\' && v[1]) {
					c = (unsigned char)*++v;
				}
				o = log_json_char(out, o, lim, c);
			}
			if (*v == '"')
				v++;
			out[o++] = '"';
		} else {
			const char *end = strchr(v, ' ');
			if (!end)
				end = v + strlen(v);
			int digits = end > v && end - v < 19;
			for (const char *d = v; d < end && digits; d++)
				digits = *d >= '0' && *d <= '9';
			if (!digits)
				out[o++] = '"';
			for (; v < end; v++)
				o = log_json_char(out, o, lim, (unsigned char)*v);
			if (!digits)
				out[o++] = '"';
		}
		p = v;
	}
	out[o++] = '}';
	out[o] = '\0';
	return o;
}

void log_write(const struct log *lg, int level, const char *fmt, ...)
{
	if (lg && level > atomic_load_explicit(&lg->level, memory_order_relaxed))
		return;
	va_list ap;
	va_start(ap, fmt);
	if (lg && lg->json) {
		char kv[4096], line[8192];
		vsnprintf(kv, sizeof(kv), fmt, ap);
		size_t len = log_kv_to_json(kv, level, line, sizeof(line) - 1);
		line[len++] = '\n';
		ssize_t w = write(STDERR_FILENO, line, len);
		(void)w;
	} else {
		log_emit(level, fmt, ap);
	}
	va_end(ap);
}

static void log_emitf(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_emit(level, fmt, ap);
	va_end(ap);
}

const char *log_value(char *buf, size_t cap, const char *s, int force)
{
	if (cap < 8) {
		if (cap)
			buf[0] = '\0';
		return buf;
	}
	if (!s)
		s = "";
	int quote = force || !*s;
	for (const unsigned char *p = (const unsigned char *)s; *p && !quote; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
			quote = 1;
	if (!quote) {
		snprintf(buf, cap, "%s", s);
		return buf;
	}
	size_t o = 0;
	buf[o++] = '"';
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[5];
		size_t n;
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			n = 2;
		} else if (*p == '\n') {
			memcpy(esc, "\\n", 2);
			n = 2;
		} else if (*p < ' ' || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
			n = 4;
		} else {
			esc[0] = (char)*p;
			n = 1;
		}
		if (o + n + 5 > cap) { /* room for "..." and the closing quote */
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(buf + o, esc, n);
		o += n;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static void log_libevent_cb(int severity, const char *msg)
{
	char v[1024];
	int level = severity >= EVENT_LOG_ERR    ? LOGL_ERROR
	            : severity == EVENT_LOG_WARN ? LOGL_WARN
	                                         : LOGL_DEBUG;
	if (level == LOGL_DEBUG)
		return; /* libevent's debug logging is off unless enabled; drop it if it is */
	log_emitf(level, "msg=%s", log_value(v, sizeof(v), msg, 1));
}

void log_hook_libevent(void)
{
	event_set_log_callback(log_libevent_cb);
}
