/* err.c: filling struct err (see err.h). */
#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* vsnprintf cuts at a byte count; a message cut inside a UTF-8 sequence would make a
 * strict msgpack decoder (Python's, for one) reject the whole frame. */
static void err_trim_utf8(char *s, size_t len)
{
	size_t i = len;
	while (i > 0 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
		i--;
	if (i > 0 && ((unsigned char)s[i - 1] & 0x80)) {
		unsigned char lead = (unsigned char)s[i - 1];
		size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
		if (len - (i - 1) < need)
			s[i - 1] = '\0';
	}
}

int err_set(struct err *e, uint32_t code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		e->msg[0] = '\0';
	else if ((size_t)n >= sizeof(e->msg))
		err_trim_utf8(e->msg, sizeof(e->msg) - 1);
	e->code = code;
	return -(int)code;
}

uint32_t err_code_from_errno(int errnum)
{
	switch (errnum) {
	case ENOENT:
	case ENOTDIR: return WIRE_E_NOT_FOUND;
	case EACCES:
	case EPERM:
	case EROFS:
	case EXDEV: return WIRE_E_PERMISSION;
	case EISDIR:
	case ENAMETOOLONG:
	case ELOOP:
	case EINVAL: return WIRE_E_INVALID;
	case EFBIG: return WIRE_E_TOO_LARGE;
	default: return WIRE_E_IO;
	}
}

int err_errno(struct err *e, const char *uri, int errnum)
{
	return err_set(e, err_code_from_errno(errnum), "%s: %s", uri, strerror(errnum));
}
