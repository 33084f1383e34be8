/* bench_curl.c: the HTTP peer's client. Reads objects from nginx (sendfile) with libcurl's
 * multi interface, N transfers at once over keep-alive connections, each landing in a
 * preallocated, touched buffer (libcurl's write callback copies into it: that copy is
 * inherent to libcurl). A worker of tests/bench/bench.py:
 *
 *   bench_curl BASE_URL LISTFILE PARALLEL [UNIX_SOCKET_PATH|-] [BUFFERSIZE]
 *
 * LISTFILE holds "SIZE PATH" lines (PATH relative to BASE_URL). The program prints "READY",
 * then per stdin line "run" fetches every object once and prints one JSON line (seconds,
 * bytes, objects, cpu seconds of this process, t0/t1 on CLOCK_MONOTONIC); "quit" exits.
 *
 * CMake globs the .c files of tests/bench and links them against s3dlio_static only, without
 * libcurl: there this file builds as a stub that says so. tests/bench/run compiles the real
 * one, with -DBENCH_WITH_CURL and the flags of `pkg-config --cflags --libs libcurl`. */
#include <stdio.h>

#ifndef BENCH_WITH_CURL
int main(void)
{
	fprintf(stderr, "bench_curl: built without libcurl; tests/bench/run compiles it with "
	                "-DBENCH_WITH_CURL and pkg-config libcurl\n");
	return 2;
}
#else
#include <curl/curl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define BC_MAX_ITEMS 1000000
#define BC_MAX_PARALLEL 256

struct item {
	uint64_t size;
	char *path;
};

struct slot {
	CURL *easy;
	uint8_t *buf;
	uint64_t cap;
	uint64_t got;
	int overflow;
	size_t item;
	char *url;
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

static size_t on_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct slot *s = arg;
	size_t n = size * nmemb;
	if (s->got + n > s->cap) {
		s->overflow = 1;
		return 0; /* fails the transfer */
	}
	memcpy(s->buf + s->got, data, n);
	s->got += n;
	return n;
}

static int load_list(const char *file, struct item **out, size_t *n_out, uint64_t *max_size)
{
	FILE *f = fopen(file, "r");
	if (!f) {
		perror(file);
		return -1;
	}
	size_t n = 0, cap = 1024;
	struct item *v = malloc(cap * sizeof(*v));
	char line[4200];
	*max_size = 0;
	while (v && fgets(line, sizeof(line), f) && n < BC_MAX_ITEMS) {
		unsigned long long size;
		char path[4097];
		if (sscanf(line, "%llu %4096s", &size, path) != 2)
			continue;
		if (n == cap) {
			cap *= 2;
			struct item *nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n].size = size;
		v[n].path = strdup(path);
		if (size > *max_size)
			*max_size = size;
		n++;
	}
	fclose(f);
	if (!v || n == 0) {
		fprintf(stderr, "bench_curl: %s: no items\n", file);
		free(v);
		return -1;
	}
	*out = v;
	*n_out = n;
	return 0;
}

static int start(CURLM *multi, struct slot *s, const char *base, const struct item *it, size_t i)
{
	size_t len = strlen(base) + strlen(it->path) + 2;
	char *url = realloc(s->url, len);
	if (!url)
		return -1;
	s->url = url;
	snprintf(url, len, "%s/%s", base, it->path);
	s->item = i;
	s->got = 0;
	s->overflow = 0;
	curl_easy_setopt(s->easy, CURLOPT_URL, url);
	return curl_multi_add_handle(multi, s->easy) == CURLM_OK ? 0 : -1;
}

/* One pass over every item; returns 0 when every object arrived whole. */
static int run_once(CURLM *multi, struct slot *slots, int parallel, const char *base,
                    const struct item *items, size_t n, uint64_t *bytes)
{
	size_t next = 0, done = 0;
	int active = 0, failed = 0;
	*bytes = 0;
	for (int k = 0; k < parallel && next < n; k++, next++) {
		if (start(multi, &slots[k], base, &items[next], next) < 0)
			return -1;
		active++;
	}
	/* bounded: every iteration waits at most 1 s and the whole pass at most 10 minutes */
	double deadline = now() + 600.0;
	while (done < n && now() < deadline) {
		int running = 0;
		curl_multi_perform(multi, &running);
		CURLMsg *m;
		int q;
		while ((m = curl_multi_info_read(multi, &q)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			struct slot *s = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
			long code = 0;
			curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
			const struct item *it = &items[s->item];
			if (m->data.result != CURLE_OK || code != 200 || s->overflow ||
			    s->got != it->size) {
				fprintf(stderr,
				        "bench_curl: %s: %s, HTTP %ld, %llu of %llu bytes\n",
				        s->url, curl_easy_strerror(m->data.result), code,
				        (unsigned long long)s->got, (unsigned long long)it->size);
				failed = 1;
			}
			*bytes += s->got;
			curl_multi_remove_handle(multi, s->easy);
			done++;
			active--;
			if (next < n && !failed) {
				if (start(multi, s, base, &items[next], next) < 0)
					return -1;
				next++;
				active++;
			}
		}
		if (failed && active == 0)
			return -1;
		if (done < n)
			curl_multi_poll(multi, NULL, 0, 1000, NULL);
	}
	return done == n && !failed ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: bench_curl BASE_URL LISTFILE PARALLEL [UNIX_PATH|-] "
		                "[BUFFERSIZE]\n");
		return 2;
	}
	const char *base = argv[1];
	int parallel = atoi(argv[3]);
	const char *unix_path = argc > 4 && strcmp(argv[4], "-") != 0 ? argv[4] : NULL;
	long bufsize = argc > 5 ? atol(argv[5]) : 512 * 1024;
	struct item *items = NULL;
	size_t n = 0;
	uint64_t max_size = 0;
	if (parallel < 1 || parallel > BC_MAX_PARALLEL) {
		fprintf(stderr, "bench_curl: PARALLEL must be 1..%d\n", BC_MAX_PARALLEL);
		return 2;
	}
	if (load_list(argv[2], &items, &n, &max_size) < 0)
		return 1;
	if ((size_t)parallel > n)
		parallel = (int)n;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURLM *multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)parallel);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)parallel);
	struct slot *slots = calloc((size_t)parallel, sizeof(*slots));
	for (int k = 0; slots && k < parallel; k++) {
		struct slot *s = &slots[k];
		s->cap = max_size ? max_size : 1;
		s->buf = malloc(s->cap);
		if (!s->buf) {
			fprintf(stderr, "bench_curl: out of memory\n");
			return 1;
		}
		memset(s->buf, 1, s->cap); /* preallocated and touched, as in bench_limit */
		s->easy = curl_easy_init();
		curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_write);
		curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
		curl_easy_setopt(s->easy, CURLOPT_PRIVATE, (char *)s);
		curl_easy_setopt(s->easy, CURLOPT_BUFFERSIZE, bufsize);
		curl_easy_setopt(s->easy, CURLOPT_TCP_NODELAY, 1L);
		curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(s->easy, CURLOPT_TIMEOUT, 300L);
		if (unix_path)
			curl_easy_setopt(s->easy, CURLOPT_UNIX_SOCKET_PATH, unix_path);
	}
	if (!slots || !multi) {
		fprintf(stderr, "bench_curl: cannot set up libcurl\n");
		return 1;
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
		double c0 = cpu_seconds(), t0 = now();
		int r = run_once(multi, slots, parallel, base, items, n, &bytes);
		double t1 = now(), c1 = cpu_seconds();
		if (r < 0) {
			printf("{\"error\": \"a transfer failed (see stderr)\"}\n");
			fflush(stdout);
			rc = 1;
			break;
		}
		printf("{\"seconds\": %.9f, \"bytes\": %llu, \"objects\": %zu, \"cpu\": %.6f, "
		       "\"t0\": %.9f, \"t1\": %.9f}\n",
		       t1 - t0, (unsigned long long)bytes, n, c1 - c0, t0, t1);
		fflush(stdout);
	}
	for (int k = 0; k < parallel; k++) {
		curl_easy_cleanup(slots[k].easy);
		free(slots[k].buf);
		free(slots[k].url);
	}
	free(slots);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	for (size_t i = 0; i < n; i++)
		free(items[i].path);
	free(items);
	return rc;
}
#endif
