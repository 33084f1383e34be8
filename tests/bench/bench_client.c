/* bench_client.c: s3dlio-c measured through libs3dlio directly, without Python. A worker of
 * tests/bench/bench.py:
 *
 *   bench_client URL LISTFILE MODE [MAX_IN_FLIGHT]
 *
 * URL is tcp://HOST:PORT or unix:///PATH; LISTFILE holds "SIZE URI" lines. MODE:
 *   many        s3dlio_get_many, each object into its own preallocated, touched buffer
 *   many-alloc  s3dlio_get_many, buffers from malloc (fresh memory every run, then freed)
 *   get         s3dlio_get_into in a loop, into one preallocated buffer
 * Prints "READY"; then per stdin line "run" fetches every object once and prints one JSON
 * line (seconds, bytes, objects, cpu seconds, t0/t1 on CLOCK_MONOTONIC); "quit" exits. */
#include <s3dlio/s3dlio.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define BCL_MAX_ITEMS 1000000

struct item {
	uint64_t size;
	char *uri;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int load_list(const char *file, struct item **out, size_t *n_out)
{
	FILE *f = fopen(file, "r");
	if (!f) {
		perror(file);
		return -1;
	}
	size_t n = 0, cap = 1024;
	struct item *v = malloc(cap * sizeof(*v));
	char line[4200];
	while (v && fgets(line, sizeof(line), f) && n < BCL_MAX_ITEMS) {
		unsigned long long size;
		char uri[4097];
		if (sscanf(line, "%llu %4096s", &size, uri) != 2)
			continue;
		if (n == cap) {
			cap *= 2;
			struct item *nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n].size = size;
		v[n].uri = strdup(uri);
		n++;
	}
	fclose(f);
	if (!v || n == 0) {
		fprintf(stderr, "bench_client: %s: no items\n", file);
		free(v);
		return -1;
	}
	*out = v;
	*n_out = n;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr,
		        "usage: bench_client URL LISTFILE many|many-alloc|get [MAX_IN_FLIGHT]\n");
		return 2;
	}
	const char *mode = argv[3];
	unsigned mif = argc > 4 ? (unsigned)atoi(argv[4]) : 64;
	int many = strcmp(mode, "many") == 0, many_alloc = strcmp(mode, "many-alloc") == 0;
	int get = strcmp(mode, "get") == 0;
	if (!many && !many_alloc && !get) {
		fprintf(stderr, "bench_client: unknown mode %s\n", mode);
		return 2;
	}
	struct item *items = NULL;
	size_t n = 0;
	if (load_list(argv[2], &items, &n) < 0)
		return 1;
	s3dlio_error err = {0, ""};
	s3dlio_client *c = s3dlio_client_new(argv[1], NULL, &err);
	if (!c) {
		fprintf(stderr, "bench_client: %s\n", err.message);
		return 1;
	}
	uint64_t max_size = 1;
	for (size_t i = 0; i < n; i++)
		if (items[i].size > max_size)
			max_size = items[i].size;
	s3dlio_request *reqs = calloc(n, sizeof(*reqs));
	uint8_t **bufs = calloc(n, sizeof(*bufs));
	uint8_t *one = NULL;
	if (!reqs || !bufs) {
		fprintf(stderr, "bench_client: out of memory\n");
		return 1;
	}
	if (many) {
		for (size_t i = 0; i < n; i++) {
			bufs[i] = malloc(items[i].size ? items[i].size : 1);
			if (!bufs[i]) {
				fprintf(stderr, "bench_client: out of memory\n");
				return 1;
			}
			memset(bufs[i], 1, items[i].size); /* preallocated and touched */
		}
	} else if (get) {
		one = malloc(max_size);
		if (!one) {
			fprintf(stderr, "bench_client: out of memory\n");
			return 1;
		}
		memset(one, 1, max_size);
	}
	printf("READY\n");
	fflush(stdout);
	char cmd[64];
	int rc = 0;
	while (fgets(cmd, sizeof(cmd), stdin)) {
		if (strncmp(cmd, "quit", 4) == 0)
			break;
		if (strncmp(cmd, "run", 3) != 0)
			continue;
		uint64_t bytes = 0;
		int r = S3DLIO_OK;
		double c0 = cpu_seconds(), t0 = now();
		if (get) {
			for (size_t i = 0; i < n && r == S3DLIO_OK; i++) {
				uint64_t got = 0;
				r = s3dlio_get_into(c, items[i].uri, 0, S3DLIO_TO_END, one,
				                    max_size, &got, &err);
				bytes += got;
			}
		} else {
			for (size_t i = 0; i < n; i++) {
				memset(&reqs[i], 0, sizeof(reqs[i]));
				reqs[i].uri = items[i].uri;
				reqs[i].length = S3DLIO_TO_END;
				if (many) {
					reqs[i].buf = bufs[i];
					reqs[i].buf_cap = items[i].size;
				}
			}
			r = s3dlio_get_many(c, reqs, n, mif, NULL, NULL, NULL, &err);
			for (size_t i = 0; i < n; i++) {
				bytes += reqs[i].size;
				if (many_alloc && reqs[i].data)
					free(reqs[i].data);
			}
			s3dlio_requests_clear(reqs, n);
		}
		double t1 = now(), c1 = cpu_seconds();
		if (r != S3DLIO_OK) {
			fprintf(stderr, "bench_client: %s\n", err.message);
			printf("{\"error\": \"%s\"}\n", s3dlio_code_str(r));
			fflush(stdout);
			rc = 1;
			break;
		}
		printf("{\"seconds\": %.9f, \"bytes\": %llu, \"objects\": %zu, \"cpu\": %.6f, "
		       "\"t0\": %.9f, \"t1\": %.9f}\n",
		       t1 - t0, (unsigned long long)bytes, n, c1 - c0, t0, t1);
		fflush(stdout);
	}
	for (size_t i = 0; i < n; i++) {
		free(bufs[i]);
		free(items[i].uri);
	}
	free(bufs);
	free(one);
	free(reqs);
	free(items);
	s3dlio_client_free(c);
	return rc;
}
