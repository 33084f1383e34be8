/* main.c: the s3dliod entry point: parse the configuration, run the server.
 * Exit status: 0 after a clean stop (or --help/--version), 2 for bad flags or
 * configuration, 1 when the server cannot start or fails. */
#include <malloc.h>
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "server.h"

/* glibc gives each worker thread an arena whose heaps it trims, or unmaps whole, as soon
 * as their top is free; a server's working set (queued frames, scratch buffers) is freed and
 * needed again every few milliseconds, and each round trip costs an mmap, munmap and a page
 * fault per 4 KiB (9 % of the samples of a small-object GET load). Keep freed memory for
 * reuse up to a bound instead, as jemalloc and tcmalloc do. */
static void main_tune_malloc(void)
{
	(void)mallopt(M_TRIM_THRESHOLD, 256 << 20);
	(void)mallopt(M_TOP_PAD, 16 << 20);
	(void)mallopt(M_MMAP_THRESHOLD, 32 << 20);
}

int main(int argc, char **argv)
{
	main_tune_malloc();
	struct config cfg;
	struct server *srv = NULL;
	struct err e;
	int status = 1;
	config_init(&cfg);
	int rc = config_parse(&cfg, argc, argv, &e);
	if (rc == CONFIG_EXIT) {
		status = 0;
		goto done;
	}
	if (rc < 0) {
		fprintf(stderr, "s3dliod: %s\n", e.msg);
		status = 2;
		goto done;
	}
	struct log lg = {.level = cfg.log_level, .json = cfg.log_json};
	char m[WIRE_MAX_MESSAGE + 64];
	rc = server_new(&cfg, &srv, &e);
	if (rc < 0) {
		log_write(&lg, LOGL_ERROR, "msg=%s", log_value(m, sizeof(m), e.msg, 1));
		/* a missing --allow root or a malformed --listen is a configuration mistake like
		 * a bad flag; a port in use or a failing system call is not */
		status = e.code == WIRE_E_IO || e.code == WIRE_E_INTERNAL ? 1 : 2;
		goto done;
	}
	rc = server_run(srv, &e);
	if (rc < 0) {
		log_write(&lg, LOGL_ERROR, "msg=%s", log_value(m, sizeof(m), e.msg, 1));
		goto done;
	}
	status = 0;
done:
	server_free(srv);
	config_free(&cfg);
	return status;
}
