/* main.c: the s3dliod entry point: parse the configuration, run the server.
 * Exit status: 0 after a clean stop (or --help/--version), 2 for bad flags or
 * configuration, 1 when the server cannot start or fails. */
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv)
{
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
	struct log lg = {cfg.log_level};
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
