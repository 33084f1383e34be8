/* config.h: s3dliod's settings, from --config FILE and the command line.
 *
 * The file holds "key = value" lines with the long option names ("listen" and "allow" may
 * repeat; '#' starts a comment); command-line flags apply after it: scalars override,
 * listen/allow entries add to the file's. */
#ifndef S3DLIOD_CONFIG_H
#define S3DLIOD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "err.h"

#define CONFIG_VERSION "0.1.0"
#define CONFIG_DEFAULT_LISTEN "tcp://127.0.0.1:9400"

struct config {
	char **listen; /* tcp://HOST:PORT or unix:///PATH; the default when none given */
	size_t nlisten;
	char **allow;
	size_t nallow;
	int threads;            /* 0: one per core */
	uint32_t max_in_flight; /* per connection */
	uint32_t max_frame;     /* DATA payload bytes */
	int idle_timeout;       /* seconds; 0: never */
	int drain_timeout;      /* seconds */
	int log_level;          /* enum log_level */
	pid_t parent_pid;       /* 0: none */
};

enum config_result {
	CONFIG_RUN = 0,  /* start the server */
	CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
};

void config_init(struct config *c);
void config_free(struct config *c);

/* Parse argv (and the --config file it names). Returns CONFIG_RUN, CONFIG_EXIT, or a
 * negative code with e naming the bad flag or line (the caller exits 2). */
int config_parse(struct config *c, int argc, char **argv, struct err *e);

void config_usage(FILE *f);

#endif
