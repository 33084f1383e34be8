/* log.c: stderr logging, one write(2) per line (see log.h). */
#include "log.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

void log_write(const struct log *lg, int level, const char *fmt, ...)
{
	if (lg && level > lg->level)
		return;
	va_list ap;
	va_start(ap, fmt);
	log_emit(level, fmt, ap);
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
