/* err.h: the error a server function fills when it fails.
 *
 * Functions return 0 or the negative wire error code (-WIRE_E_*) and fill a struct err
 * whose message names the URI and the cause; that message is what the client sees in the
 * ERROR frame, so it is bounded by the protocol's message limit. */
#ifndef S3DLIOD_ERR_H
#define S3DLIOD_ERR_H

#include <stdint.h>

#include "wire.h"

struct err {
	uint32_t code;                  /* enum wire_code */
	char msg[WIRE_MAX_MESSAGE + 1]; /* NUL-terminated, valid UTF-8 if the inputs were */
};

/* Fill e and return -code. */
int err_set(struct err *e, uint32_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill e from an errno value: "<uri>: <strerror>" with the matching wire code. */
int err_errno(struct err *e, const char *uri, int errnum);

/* The wire code an errno value maps to. */
uint32_t err_code_from_errno(int errnum);

#endif
