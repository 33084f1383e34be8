/* bench_limit.c: the physical limit of this machine's data path, the figure s3dlio is measured
 * against. A child process sends a file with sendfile() over loopback TCP or a Unix socket; the
 * parent recv()s it into one preallocated buffer. Prints one line per run and the median.
 *
 *   bench_limit FILE [tcp|unix] [runs]
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Listens, forks a sender, returns the connected receiving socket. */
static int connect_pair(int use_unix, const char *file, off_t size, pid_t *child)
{
	int ls = -1, fd = -1;
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof(ss));
	if (use_unix) {
		struct sockaddr_un *un = (struct sockaddr_un *)&ss;
		un->sun_family = AF_UNIX;
		snprintf(un->sun_path, sizeof(un->sun_path), "/tmp/bench_limit.%d.sock", getpid());
		unlink(un->sun_path);
		sl = sizeof(*un);
		ls = socket(AF_UNIX, SOCK_STREAM, 0);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		in->sin_family = AF_INET;
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof(*in);
		ls = socket(AF_INET, SOCK_STREAM, 0);
	}
	if (ls < 0 || bind(ls, (struct sockaddr *)&ss, sl) < 0 || listen(ls, 1) < 0 ||
	    getsockname(ls, (struct sockaddr *)&ss, &sl) < 0) {
		perror("bench_limit: listen");
		exit(1);
	}
	pid_t pid = fork();
	if (pid == 0) {
		int s = socket(ss.ss_family, SOCK_STREAM, 0);
		if (connect(s, (struct sockaddr *)&ss, sl) < 0) {
			perror("bench_limit: connect");
			_exit(1);
		}
		int in = open(file, O_RDONLY);
		off_t off = 0;
		while (off < size) {
			ssize_t n = sendfile(s, in, &off, (size_t)(size - off));
			if (n <= 0) {
				perror("bench_limit: sendfile");
				_exit(1);
			}
		}
		close(s);
		_exit(0);
	}
	fd = accept(ls, NULL, NULL);
	if (fd < 0) {
		perror("bench_limit: accept");
		exit(1);
	}
	if (use_unix)
		unlink(((struct sockaddr_un *)&ss)->sun_path);
	close(ls);
	*child = pid;
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_limit FILE [tcp|unix] [runs]\n");
		return 2;
	}
	int use_unix = argc > 2 && strcmp(argv[2], "unix") == 0;
	int runs = argc > 3 ? atoi(argv[3]) : 5;
	if (runs < 1 || runs > 100)
		runs = 5;
	struct stat st;
	if (stat(argv[1], &st) < 0) {
		fprintf(stderr, "bench_limit: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	size_t size = (size_t)st.st_size;
	uint8_t *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("bench_limit: mmap");
		return 1;
	}
	memset(buf, 1, size); /* fault the pages in: a preallocated, touched buffer */
	double *gbps = calloc((size_t)runs, sizeof(double));
	for (int r = 0; r < runs; r++) {
		pid_t child;
		int fd = connect_pair(use_unix, argv[1], st.st_size, &child);
		double t0 = now();
		size_t got = 0;
		while (got < size) {
			ssize_t n = recv(fd, buf + got, size - got, 0);
			if (n <= 0) {
				fprintf(stderr, "bench_limit: recv: %s\n", n ? strerror(errno) : "EOF");
				return 1;
			}
			got += (size_t)n;
		}
		double dt = now() - t0;
		close(fd);
		waitpid(child, NULL, 0);
		gbps[r] = (double)size / dt / 1e9;
		printf("run %d: %.3f GB/s\n", r + 1, gbps[r]);
	}
	qsort(gbps, (size_t)runs, sizeof(double), cmp_double);
	printf("median %s %.3f GB/s (%zu bytes, %d runs)\n", use_unix ? "unix" : "tcp", gbps[runs / 2],
	       size, runs);
	free(gbps);
	munmap(buf, size);
	return 0;
}
