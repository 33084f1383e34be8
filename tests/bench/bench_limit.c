/* bench_limit.c: the physical limit of this machine's data path, the figure s3dlio is measured
 * against. A child process sends files with sendfile() over loopback TCP or a Unix socket; the
 * parent recv()s them into one preallocated, touched buffer. One connection serves every run,
 * as a pooled client's would: a fresh connection per run would measure TCP's window ramp-up
 * (about half the throughput for 64 MiB), not the data path.
 *
 *   bench_limit FILE [tcp|unix] [runs]          one file; prints each run and the median
 *   bench_limit [-u] [-r RUNS] [-s] FILE...      several files back to back per run
 *
 * -u: Unix socket (default TCP). -l BYTES: SO_RCVLOWAT on the receiving socket (wake the
 * receiver only once that much has arrived). -s: a worker of tests/bench/bench.py: prints
 * "READY", then per stdin line "run" sends every file once and prints one JSON line (seconds,
 * bytes, objects, cpu seconds of the receiver and of the sender ("server_cpu"), t0/t1 on
 * CLOCK_MONOTONIC); "quit" exits.
 * Without -s: one warm-up run, then RUNS timed runs (default 5), the median, and the CPU
 * seconds per GB of receiver and sender. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIMIT_MAX_FILES 100000

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds of this process and its waited-for children (the sender, at the end) */
static double cpu_seconds(int who)
{
	struct rusage ru;
	getrusage(who, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of another process, from /proc (the sender runs until the end) */
static double proc_cpu_seconds(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	unsigned long long ut = 0, st = 0;
	if (!p ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The sender: per byte received from the parent, sends every file once; stops at EOF. */
static void sender(int s, char **files, int nfiles)
{
	int *fds = calloc((size_t)nfiles, sizeof(int));
	off_t *sizes = calloc((size_t)nfiles, sizeof(off_t));
	if (!fds || !sizes)
		_exit(1);
	for (int i = 0; i < nfiles; i++) {
		struct stat st;
		fds[i] = open(files[i], O_RDONLY);
		if (fds[i] < 0 || fstat(fds[i], &st) < 0) {
			perror(files[i]);
			_exit(1);
		}
		sizes[i] = st.st_size;
	}
	char go;
	while (read(s, &go, 1) == 1) {
		for (int i = 0; i < nfiles; i++) {
			off_t off = 0;
			while (off < sizes[i]) {
				ssize_t n = sendfile(s, fds[i], &off, (size_t)(sizes[i] - off));
				if (n <= 0) {
					perror("bench_limit: sendfile");
					_exit(1);
				}
			}
		}
	}
	_exit(0);
}

/* Listens, forks the sender, returns the connected receiving socket. */
static int connect_pair(int use_unix, char **files, int nfiles, pid_t *child)
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
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(ls);
		int s = socket(ss.ss_family, SOCK_STREAM, 0);
		if (connect(s, (struct sockaddr *)&ss, sl) < 0) {
			perror("bench_limit: connect");
			_exit(1);
		}
		sender(s, files, nfiles);
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

/* One run: asks for every file, receives them into buf; returns seconds or -1. */
static double run_once(int fd, uint8_t *buf, size_t total, double *t0_out)
{
	double t0 = now();
	if (write(fd, "g", 1) != 1) {
		perror("bench_limit: write");
		return -1;
	}
	size_t got = 0;
	while (got < total) {
		ssize_t n = recv(fd, buf + got, total - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "bench_limit: recv: %s\n", n ? strerror(errno) : "EOF");
			return -1;
		}
		got += (size_t)n;
	}
	*t0_out = t0;
	return now() - t0;
}

int main(int argc, char **argv)
{
	int use_unix = 0, runs = 5, serve = 0, legacy = 0, lowat = 0;
	char **files = NULL;
	int nfiles = 0;
	if (argc >= 3 && argc <= 4 &&
	    (strcmp(argv[2], "tcp") == 0 || strcmp(argv[2], "unix") == 0)) {
		legacy = 1; /* bench_limit FILE [tcp|unix] [runs] */
		use_unix = strcmp(argv[2], "unix") == 0;
		runs = argc > 3 ? atoi(argv[3]) : 5;
		files = &argv[1];
		nfiles = 1;
	} else {
		int opt;
		while ((opt = getopt(argc, argv, "ur:sl:")) != -1) {
			if (opt == 'u')
				use_unix = 1;
			else if (opt == 'l')
				lowat = atoi(optarg);
			else if (opt == 'r')
				runs = atoi(optarg);
			else if (opt == 's')
				serve = 1;
			else
				goto usage;
		}
		files = &argv[optind];
		nfiles = argc - optind;
	}
	if (nfiles < 1 || nfiles > LIMIT_MAX_FILES)
		goto usage;
	if (runs < 1 || runs > 100)
		runs = 5;
	size_t total = 0;
	for (int i = 0; i < nfiles; i++) {
		struct stat st;
		if (stat(files[i], &st) < 0) {
			fprintf(stderr, "bench_limit: %s: %s\n", files[i], strerror(errno));
			return 1;
		}
		total += (size_t)st.st_size;
	}
	if (total == 0) {
		fprintf(stderr, "bench_limit: nothing to send\n");
		return 1;
	}
	uint8_t *buf =
	    mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("bench_limit: mmap");
		return 1;
	}
	memset(buf, 1, total); /* fault the pages in: a preallocated, touched buffer */
	pid_t child;
	int fd = connect_pair(use_unix, files, nfiles, &child);
	if (lowat > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) < 0)
		perror("bench_limit: SO_RCVLOWAT");
	int rc = 0;
	double t0;
	if (serve) {
		printf("READY\n");
		fflush(stdout);
		char cmd[64];
		while (fgets(cmd, sizeof(cmd), stdin)) {
			if (strncmp(cmd, "quit", 4) == 0)
				break;
			if (strncmp(cmd, "run", 3) != 0)
				continue;
			double c0 = cpu_seconds(RUSAGE_SELF), s0 = proc_cpu_seconds(child);
			double dt = run_once(fd, buf, total, &t0);
			if (dt < 0) {
				printf("{\"error\": \"transfer failed (see stderr)\"}\n");
				fflush(stdout);
				rc = 1;
				break;
			}
			printf(
			    "{\"seconds\": %.9f, \"bytes\": %zu, \"objects\": %d, \"cpu\": %.6f, "
			    "\"server_cpu\": %.6f, \"t0\": %.9f, \"t1\": %.9f}\n",
			    dt, total, nfiles, cpu_seconds(RUSAGE_SELF) - c0,
			    proc_cpu_seconds(child) - s0, t0, t0 + dt);
			fflush(stdout);
		}
	} else {
		double *gbps = calloc((size_t)runs, sizeof(double));
		if (!gbps || run_once(fd, buf, total, &t0) < 0) /* warm-up: window and caches */
			return 1;
		double c0 = cpu_seconds(RUSAGE_SELF), s0 = proc_cpu_seconds(child);
		for (int r = 0; r < runs; r++) {
			double dt = run_once(fd, buf, total, &t0);
			if (dt < 0)
				return 1;
			gbps[r] = (double)total / dt / 1e9;
			printf("run %d: %.3f GB/s\n", r + 1, gbps[r]);
		}
		qsort(gbps, (size_t)runs, sizeof(double), cmp_double);
		double gb = (double)total * runs / 1e9;
		printf("median %s %.3f GB/s (%zu bytes in %d file%s, %d runs); CPU s/GB: receiver "
		       "%.3f, sender %.3f\n",
		       use_unix ? "unix" : "tcp", gbps[runs / 2], total, nfiles,
		       nfiles > 1 ? "s" : "", runs, (cpu_seconds(RUSAGE_SELF) - c0) / gb,
		       (proc_cpu_seconds(child) - s0) / gb);
		free(gbps);
	}
	close(fd); /* the sender sees EOF and exits */
	waitpid(child, NULL, 0);
	munmap(buf, total);
	(void)legacy;
	return rc;
usage:
	fprintf(stderr, "usage: bench_limit FILE [tcp|unix] [runs]\n"
	                "       bench_limit [-u] [-r RUNS] [-s] FILE...\n");
	return 2;
}
