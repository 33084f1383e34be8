/* file.c: the file:// and direct:// backends (local files beneath an --allow root).
 *
 * file:// sends payload above FILE_COPY_MAX with sendfile (one libevent file segment per
 * DATA frame). The CRC32C of the END frame comes from the server's crccache when the GET
 * covers a whole file seen before; otherwise the same range is pread() into the thread's
 * scratch buffer in L2-sized pieces (so the CRC reads cache-hot bytes), and a whole file's
 * CRC is remembered. Small payloads are copied from that pread instead of sent as a file
 * segment: a segment costs a dup, a sendfile and their bookkeeping, more than copying 64
 * KiB. We do not mmap: a file truncated while mapped would SIGBUS the whole server.
 *
 * direct:// GETs never block the loop: each max_frame chunk is read with O_DIRECT on an
 * iopool thread into a 4096-aligned buffer covering an aligned superset of the chunk, and
 * the wanted slice is handed to the connection by reference (backend_sink.data_ref). At
 * most FILE_DIRECT_DEPTH chunks per GET are read or waiting at once, and none is started
 * while the connection has paused the GET, so a slow reader holds a bounded amount.
 *
 * Uploads (either scheme) go to a temporary file beside the target, which is fsynced and
 * renamed over it only once every byte arrived and matched.
 *
 * LIST of a URI ending in '/' reads that directory; without the slash the URI names one
 * path (a directory, listed as with the slash, or a file, listed alone), never a prefix of
 * its siblings' names. MKDIR is mkdir -p beneath the root (uri_mkdir); RMDIR removes an
 * empty directory. */
#include "backend.h"
#include "crccache.h"
#include "iopool.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_DIRECT_ALIGN 4096u
#define FILE_DIRECT_DEPTH 2 /* chunk reads per direct:// GET in the pool or waiting */
#define FILE_LIST_MAX_DEPTH 128
#define FILE_COPY_MAX (64u * 1024)    /* payloads up to this are copied, not sendfile'd */
#define FILE_CRC_PIECE (256u * 1024)  /* pread + CRC step: stays in L2 */

struct backend_reader {
	int fd;
	char *uri; /* for messages */
	struct crccache *crccache;
	struct crccache_key key; /* the file as opened */
	uint64_t crc_next;       /* bytes [0, crc_next) were read in order with their CRC ... */
	uint32_t crc_run;        /* ... which is this */
	int crc_known;           /* the cache had the whole file's CRC at open */
	uint32_t crc_whole;
};

struct backend_writer {
	int dirfd;
	int fd;
	uint64_t off;
	char tmp[NAME_MAX + 1];
	char *base;
	char *uri;
};

static int64_t file_mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static void file_info(const struct stat *st, struct backend_info *info)
{
	info->size = (uint64_t)st->st_size;
	info->mtime_ns = file_mtime_ns(st);
	/* not a content hash: changes whenever the file is rewritten, which is what a cache
	 * validator needs */
	int n = snprintf(info->etag, sizeof(info->etag), "%" PRIx64 "-%" PRIx64,
	                 (uint64_t)info->mtime_ns, info->size);
	info->etag_len = n > 0 ? (uint32_t)n : 0;
}

static int file_check_regular(const struct uri *u, const struct stat *st, struct err *e)
{
	if (S_ISDIR(st->st_mode))
		return err_set(e, WIRE_E_INVALID, "%s: is a directory", u->text);
	if (!S_ISREG(st->st_mode))
		return err_set(e, WIRE_E_INVALID, "%s: not a regular file", u->text);
	return 0;
}

static int file_stat(struct backend_ctx *ctx, const struct uri *u, struct backend_info *info,
                     struct err *e)
{
	int fd = -1;
	struct stat st;
	int result = uri_open(ctx->policy, u, u->path, O_PATH, &fd, e);
	if (result < 0)
		goto done;
	if (fstat(fd, &st) < 0) {
		result = err_errno(e, u->text, errno);
		goto done;
	}
	result = file_check_regular(u, &st, e);
	if (result < 0)
		goto done;
	file_info(&st, info);
done:
	if (fd >= 0)
		close(fd);
	return result;
}

static int file_open_common(struct backend_ctx *ctx, const struct uri *u, int direct,
                            struct backend_reader **rp, struct backend_info *info, struct err *e)
{
	struct backend_reader *r = NULL;
	int fd = -1;
	struct stat st;
	int result = uri_open(ctx->policy, u, u->path, O_RDONLY, &fd, e);
	if (result < 0)
		goto done;
	if (fstat(fd, &st) < 0) {
		result = err_errno(e, u->text, errno);
		goto done;
	}
	result = file_check_regular(u, &st, e);
	if (result < 0)
		goto done;
	/* set after the open so that EINVAL here means exactly "no O_DIRECT on this fs" */
	if (direct && fcntl(fd, F_SETFL, O_DIRECT) < 0) {
		if (errno == EINVAL)
			result = err_set(e, WIRE_E_UNSUPPORTED,
			                 "%s: filesystem does not support O_DIRECT", u->text);
		else
			result = err_errno(e, u->text, errno);
		goto done;
	}
	r = calloc(1, sizeof(*r));
	if (!r || !(r->uri = strdup(u->text))) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
		goto done;
	}
	file_info(&st, info);
	r->fd = fd;
	fd = -1;
	/* small files are read whole anyway (FILE_COPY_MAX): their CRC costs nothing extra */
	if (!direct && (uint64_t)st.st_size > FILE_COPY_MAX) {
		r->crccache = ctx->crccache;
		crccache_key_of(&st, &r->key);
		r->crc_known = crccache_get(r->crccache, &r->key, &r->crc_whole);
	}
	*rp = r;
	r = NULL;
done:
	if (r) {
		free(r->uri);
		free(r);
	}
	if (fd >= 0)
		close(fd);
	return result;
}

static int file_open_read(struct backend_ctx *ctx, const struct uri *u, struct backend_reader **r,
                          struct backend_info *info, struct err *e)
{
	return file_open_common(ctx, u, 0, r, info, e);
}

/* pread until n bytes or end of file; returns bytes read or -1 (errno set). */
static ssize_t file_pread_full(int fd, uint8_t *buf, size_t n, uint64_t off)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* Continue the in-order CRC of the reader over bytes [off, off + n), which are at p; a
 * whole file's CRC goes to the cache once the file has been read to its end. */
static void file_crc_track(struct backend_reader *r, uint64_t off, const uint8_t *p, size_t n,
                           uint32_t prev, const uint32_t *next)
{
	if (!r->crccache || r->crc_known || off != r->crc_next)
		return;
	/* the caller's CRC went from prev to *next over the same bytes: the same state gives the
	 * same result, so a GET from offset 0 computes each CRC once */
	r->crc_run = next && prev == r->crc_run ? *next : wire_crc32c(r->crc_run, p, n);
	r->crc_next += n;
	if (r->crc_next != r->key.size)
		return;
	/* the file must still be the one we opened: its key is what the CRC is stored under */
	struct stat st;
	struct crccache_key now;
	struct timespec ts;
	if (fstat(r->fd, &st) < 0 || clock_gettime(CLOCK_REALTIME, &ts) < 0)
		return;
	crccache_key_of(&st, &now);
	if (memcmp(&now, &r->key, sizeof(now)) == 0)
		crccache_put(r->crccache, &r->key, r->crc_run,
		             (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
}

/* pread [off, off + n) into the scratch buffer, FILE_CRC_PIECE at a time, continuing *crc
 * (when not NULL) and the reader's own whole-file CRC. Up to FILE_COPY_MAX (one piece) the
 * bytes are left in scratch for the caller. */
static int file_pread_crc(struct backend_reader *r, struct backend_ctx *ctx, uint64_t off,
                          size_t n, uint32_t *crc, struct err *e)
{
	for (size_t done = 0; done < n;) {
		size_t take = n - done < FILE_CRC_PIECE ? n - done : FILE_CRC_PIECE;
		ssize_t got = file_pread_full(r->fd, ctx->scratch, take, off + done);
		if (got < 0)
			return err_errno(e, r->uri, errno);
		if ((size_t)got < take)
			return err_set(e, WIRE_E_IO, "%s: file shrank during read", r->uri);
		uint32_t prev = crc ? *crc : 0;
		if (crc)
			*crc = wire_crc32c(*crc, ctx->scratch, take);
		file_crc_track(r, off + done, ctx->scratch, take, prev, crc);
		done += take;
	}
	return 0;
}

static int file_read_sendfile(struct backend_reader *r, struct backend_ctx *ctx, uint64_t off,
                              size_t n, struct evbuffer *out, uint32_t *crc, struct err *e)
{
	struct evbuffer_file_segment *seg = NULL;
	int segfd = -1;
	int result = 0;
	if (n > ctx->max_frame)
		return err_set(e, WIRE_E_INTERNAL, "%s: read of %zu bytes over the frame size",
		               r->uri, n);
	if (!ctx->scratch && !(ctx->scratch = malloc(ctx->max_frame)))
		return err_set(e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
	if (n <= FILE_COPY_MAX) {
		result = file_pread_crc(r, ctx, off, n, crc, e);
		if (result == 0 && evbuffer_add(out, ctx->scratch, n) < 0)
			result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
		return result;
	}
	/* Without a CRC to compute the pread is skipped; a file that shrinks after the open
	 * then ends the sendfile early, which closes the connection (the client fails the
	 * request): never a short object reported whole. */
	if (crc || !r->crc_known) {
		result = file_pread_crc(r, ctx, off, n, crc, e);
		if (result < 0)
			return result;
	}
	/* each segment owns a duplicate descriptor: the request may end (and close its fd)
	 * while segments still wait in the socket buffer */
	segfd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
	if (segfd < 0) {
		result = err_errno(e, r->uri, errno);
		goto done;
	}
	seg = evbuffer_file_segment_new(segfd, (ev_off_t)off, (ev_off_t)n,
	                                EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_MMAP |
	                                    EVBUF_FS_DISABLE_LOCKING);
	if (!seg) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: cannot create a file segment", r->uri);
		goto done;
	}
	segfd = -1; /* the segment closes it */
	if (evbuffer_add_file_segment(out, seg, 0, (ev_off_t)n) < 0)
		result = err_set(e, WIRE_E_INTERNAL, "%s: cannot queue a file segment", r->uri);
done:
	if (seg)
		evbuffer_file_segment_free(seg); /* the buffer holds its own reference */
	if (segfd >= 0)
		close(segfd);
	return result;
}

static int file_read(struct backend_reader *r, struct backend_ctx *ctx, uint64_t off, size_t n,
                     struct evbuffer *out, uint32_t *crc, struct err *e)
{
	return file_read_sendfile(r, ctx, off, n, out, crc, e);
}

static int file_whole_crc(struct backend_reader *r, uint32_t *crc)
{
	if (!r->crc_known)
		return 0;
	*crc = r->crc_whole;
	return 1;
}

static void file_close_read(struct backend_reader *r)
{
	if (!r)
		return;
	close(r->fd);
	free(r->uri);
	free(r);
}

/* ---- direct:// GET, off the loop ----
 *
 * The op's chunks form a ring in object order: chunk[head] is delivered next, count are in
 * use (read by the pool, or read and waiting for their turn or for the connection to
 * resume). Chunks point into the op, so the op lives until the pool has handed every one
 * back: a GET that ends or is cancelled is only marked over, and freed by the last of its
 * completions (which then deliver nothing). */

enum file_chunk_state { FILE_CHUNK_FREE, FILE_CHUNK_READING, FILE_CHUNK_READY };

struct file_chunk {
	struct iopool_job job; /* first: the pool hands back &job */
	struct backend_op *op;
	int state;
	uint64_t off; /* object offset of the wanted bytes */
	size_t n;     /* wanted bytes; 0: no read, only a turn on the loop */
	uint8_t *buf; /* aligned; the wanted bytes start at buf + skip */
	size_t skip;
	int rc; /* of the read; e says why */
	struct err e;
};

struct backend_op {
	struct backend_reader *rd;
	struct backend_sink sink;
	struct backend_info info;
	struct iopool *pool;
	struct iopool_inbox *inbox;
	uint32_t max_frame;
	uint64_t start, end; /* the wanted object bytes */
	uint64_t next_off;   /* where the next chunk starts */
	struct file_chunk chunk[FILE_DIRECT_DEPTH];
	unsigned head, count;
	unsigned in_pool; /* chunks the pool has not handed back */
	int header_sent;
	int paused;
	int pumping;
	int over; /* done was reported, or the connection cancelled: deliver nothing more */
};

static void file_free_aligned(const void *data, size_t len, void *base)
{
	(void)data;
	(void)len;
	free(base);
}

/* On a pool thread: read the aligned superset of the chunk's bytes. Touches only the chunk
 * and the op's descriptor and URI, which stay put while the chunk is in the pool. */
static void direct_chunk_run(struct iopool_job *j)
{
	struct file_chunk *k = (struct file_chunk *)j;
	const struct backend_reader *r = k->op->rd;
	uint64_t a_off = k->off & ~(uint64_t)(FILE_DIRECT_ALIGN - 1);
	uint64_t end = k->off + k->n;
	uint64_t a_end = (end + FILE_DIRECT_ALIGN - 1) & ~(uint64_t)(FILE_DIRECT_ALIGN - 1);
	size_t alen = (size_t)(a_end - a_off);
	size_t need = (size_t)(end - a_off);
	size_t got = 0;
	k->rc = 0;
	k->skip = (size_t)(k->off - a_off);
	if (k->n == 0)
		return;
	if (posix_memalign((void **)&k->buf, FILE_DIRECT_ALIGN, alen) != 0) {
		k->buf = NULL;
		k->rc = err_set(&k->e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
		return;
	}
	while (got < need) {
		ssize_t m = pread(r->fd, k->buf + got, alen - got, (off_t)(a_off + got));
		if (m < 0 && errno == EINTR)
			continue;
		if (m < 0 && errno == EINVAL) {
			k->rc = err_set(&k->e, WIRE_E_UNSUPPORTED,
			                "%s: filesystem does not support O_DIRECT", r->uri);
			goto done;
		}
		if (m < 0) {
			k->rc = err_errno(&k->e, r->uri, errno);
			goto done;
		}
		if (m == 0)
			break;
		got += (size_t)m;
		if (got % FILE_DIRECT_ALIGN)
			break; /* a short, unaligned read: the end of the file */
	}
	if (got < need)
		k->rc = err_set(&k->e, WIRE_E_IO, "%s: file shrank during read", r->uri);
done:
	if (k->rc < 0) {
		free(k->buf);
		k->buf = NULL;
	}
}

static void direct_op_free_if_idle(struct backend_op *op)
{
	if (!op->over || op->in_pool || op->pumping)
		return;
	for (unsigned i = 0; i < FILE_DIRECT_DEPTH; i++)
		free(op->chunk[i].buf);
	file_close_read(op->rd);
	free(op);
}

static void direct_submit(struct backend_op *op, uint64_t off, size_t n)
{
	struct file_chunk *k = &op->chunk[(op->head + op->count) % FILE_DIRECT_DEPTH];
	k->state = FILE_CHUNK_READING;
	k->off = off;
	k->n = n;
	k->buf = NULL;
	op->count++;
	op->in_pool++;
	iopool_submit(op->pool, op->inbox, &k->job);
}

/* Start reads while there is room in the ring and the connection wants more. */
static void direct_fill(struct backend_op *op)
{
	while (!op->paused && op->count < FILE_DIRECT_DEPTH && op->next_off < op->end) {
		/* the first chunk ends on an alignment boundary, so later ones start on one */
		uint64_t n = op->max_frame - (op->next_off & (FILE_DIRECT_ALIGN - 1));
		if (n > op->end - op->next_off)
			n = op->end - op->next_off;
		direct_submit(op, op->next_off, (size_t)n);
		op->next_off += n;
	}
}

static void direct_finish(struct backend_op *op, int rc, const struct err *e)
{
	op->over = 1;
	op->sink.done(op->sink.arg, rc, e);
}

/* On the loop: report what is ready, in order, and keep the ring full. May free op. */
static void direct_pump(struct backend_op *op)
{
	if (op->pumping)
		return;
	op->pumping = 1;
	while (!op->over) {
		struct file_chunk *k = &op->chunk[op->head];
		if (!op->header_sent) {
			op->header_sent = 1;
			op->sink.header(op->sink.arg, op->end - op->start, &op->info);
			continue;
		}
		if (op->count && k->state == FILE_CHUNK_READY) {
			if (k->rc < 0) {
				direct_finish(op, k->rc, &k->e);
				break;
			}
			if (op->paused)
				break;
			uint8_t *buf = k->buf;
			k->buf = NULL;
			k->state = FILE_CHUNK_FREE;
			op->head = (op->head + 1) % FILE_DIRECT_DEPTH;
			op->count--;
			if (k->n)
				op->sink.data_ref(op->sink.arg, buf + k->skip, k->n,
				                  file_free_aligned, buf);
			continue;
		}
		if (!op->count && op->next_off >= op->end) {
			direct_finish(op, 0, NULL);
			break;
		}
		direct_fill(op);
		break;
	}
	op->pumping = 0;
	direct_op_free_if_idle(op);
}

static void direct_chunk_done(struct iopool_job *j)
{
	struct file_chunk *k = (struct file_chunk *)j;
	struct backend_op *op = k->op;
	op->in_pool--;
	k->state = FILE_CHUNK_READY;
	if (op->over)
		direct_op_free_if_idle(op);
	else
		direct_pump(op);
}

static int direct_get(struct backend_ctx *ctx, const struct uri *u, uint64_t off, uint64_t len,
                      const struct backend_sink *s, struct backend_op **opp, struct err *e)
{
	struct backend_reader *rd = NULL;
	struct backend_info info;
	struct backend_op *op = NULL;
	int result = file_open_common(ctx, u, 1, &rd, &info, e);
	if (result < 0)
		goto done;
	if (off > info.size) {
		result = err_set(e, WIRE_E_RANGE,
		                 "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)",
		                 u->text, off, info.size);
		goto done;
	}
	if (!ctx->iopool || !ctx->inbox) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: no direct:// I/O threads", u->text);
		goto done;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
		goto done;
	}
	op->rd = rd;
	rd = NULL;
	op->sink = *s;
	op->info = info;
	op->pool = ctx->iopool;
	op->inbox = ctx->inbox;
	op->max_frame = ctx->max_frame;
	op->start = op->next_off = off;
	op->end = off + (len < info.size - off ? len : info.size - off);
	for (unsigned i = 0; i < FILE_DIRECT_DEPTH; i++) {
		op->chunk[i].op = op;
		op->chunk[i].job.run = direct_chunk_run;
		op->chunk[i].job.done = direct_chunk_done;
	}
	/* the sink hears nothing before the first completion: an empty range still takes a
	 * (read-less) turn through the pool, so its header and end come from the loop */
	if (op->start == op->end)
		direct_submit(op, off, 0);
	else
		direct_fill(op);
	*opp = op;
	op = NULL;
done:
	free(op);
	file_close_read(rd);
	return result;
}

static void direct_pause(struct backend_op *op, int pause)
{
	op->paused = pause;
	if (!pause && !op->over)
		direct_pump(op);
}

static void direct_cancel(struct backend_op *op)
{
	op->over = 1;
	direct_op_free_if_idle(op);
}

static const struct backend_async_ops direct_async_get = {
    .get = direct_get,
    .pause = direct_pause,
    .cancel = direct_cancel,
};

/* ---- LIST ---- */

#define FILE_TMP_TAG ".s3dlio-"

/* Our own upload in progress (".NAME.s3dlio-<16 hex>.tmp", see file_put_open): never listed,
 * an object exists only once renamed into place. */
static int file_is_upload_temp(const char *name, size_t len)
{
	const size_t tail = sizeof(FILE_TMP_TAG) - 1 + 16 + 4;
	if (name[0] != '.' || len < 1 + tail)
		return 0;
	const char *t = name + len - tail;
	if (memcmp(t, FILE_TMP_TAG, sizeof(FILE_TMP_TAG) - 1) != 0 ||
	    strcmp(name + len - 4, ".tmp"))
		return 0;
	for (const char *h = t + sizeof(FILE_TMP_TAG) - 1; h < name + len - 4; h++)
		if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f')))
			return 0;
	return 1;
}

/* Names that are not UTF-8 cannot travel in a msgpack str (clients decode strictly) nor be
 * named in a request, so a listing leaves them out. */
static int file_name_is_utf8(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		size_t n = c < 0x80             ? 0
		           : (c & 0xe0) == 0xc0 ? 1
		           : (c & 0xf0) == 0xe0 ? 2
		           : (c & 0xf8) == 0xf0 ? 3
		                                : 4;
		if (n == 4 || (n == 1 && c < 0xc2) || len - i <= n)
			return 0; /* a bad lead byte, or the sequence runs past the end */
		uint32_t cp = n == 0 ? c : c & (0x3f >> n);
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		/* overlong forms, surrogates, past U+10FFFF */
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += n + 1;
	}
	return 1;
}

struct file_walk {
	struct backend_ctx *ctx;
	const struct uri *u;
	struct backend_list *out;
	int recursive;
	char path[WIRE_MAX_URI + 1]; /* absolute path of the directory being read, with '/' */
	char uri[WIRE_MAX_URI + 1];
};

static int file_walk_add(struct file_walk *w, size_t plen, const char *name, int dir,
                         const struct stat *st, struct err *e)
{
	int n = snprintf(w->uri, sizeof(w->uri), "%s://%.*s%s%s", w->u->scheme_name, (int)plen,
	                 w->path, name, dir ? "/" : "");
	if (n < 0 || (size_t)n > WIRE_MAX_URI)
		return 0; /* a URI the protocol cannot carry: leave it out */
	if (backend_list_add(w->out, w->uri, dir ? 0 : (uint64_t)st->st_size,
	                     dir ? 0 : file_mtime_ns(st), dir) < 0)
		return err_set(e, WIRE_E_INTERNAL, "%s: out of memory while listing", w->u->text);
	return 0;
}

/* Read the directory fd (owned: closed here) whose path is w->path[0..plen). */
static int file_walk_dir(struct file_walk *w, int fd, size_t plen, int depth, struct err *e)
{
	int result = 0;
	DIR *d = fdopendir(fd);
	if (!d) {
		result = err_errno(e, w->u->text, errno);
		close(fd);
		return result;
	}
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				result = err_errno(e, w->u->text, errno);
			break;
		}
		const char *name = de->d_name;
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			continue;
		size_t nlen = strlen(name);
		if (plen + nlen + 1 > WIRE_MAX_URI)
			continue; /* its URI would be over the protocol's limit */
		if (file_is_upload_temp(name, nlen) ||
		    !file_name_is_utf8((const unsigned char *)name, nlen))
			continue;
		struct stat st;
		if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed since readdir */
		int is_link = S_ISLNK(st.st_mode);
		if (is_link) {
			/* a link counts as what it points to, if that stays beneath the root */
			struct err ignored;
			int lfd = -1;
			memcpy(w->path + plen, name, nlen + 1);
			int rc = uri_open(w->ctx->policy, w->u, w->path, O_PATH, &lfd, &ignored);
			w->path[plen] = '\0';
			if (rc < 0)
				continue;
			rc = fstat(lfd, &st);
			close(lfd);
			if (rc < 0)
				continue;
		}
		if (S_ISREG(st.st_mode)) {
			result = file_walk_add(w, plen, name, 0, &st, e);
		} else if (S_ISDIR(st.st_mode) && !w->recursive) {
			result = file_walk_add(w, plen, name, 1, &st, e);
		} else if (S_ISDIR(st.st_mode) && !is_link && depth < FILE_LIST_MAX_DEPTH) {
			/* linked directories are not followed: they could loop */
			int sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				continue;
			memcpy(w->path + plen, name, nlen);
			w->path[plen + nlen] = '/';
			w->path[plen + nlen + 1] = '\0';
			result = file_walk_dir(w, sub, plen + nlen + 1, depth + 1, e);
			w->path[plen] = '\0';
		}
		if (result < 0)
			break;
	}
	closedir(d);
	return result;
}

/* A URI without a trailing slash names one path: the directory it is (listed as if the
 * slash were there), the file it is (listed alone), or nothing (an empty listing). Never a
 * prefix of sibling names: file:///data/val must not list /data/val_extra/. */
static int file_list_named(struct backend_ctx *ctx, const struct uri *u, struct file_walk *w,
                           int *dirfd, size_t *plen, struct err *e)
{
	int fd = -1;
	struct stat st;
	int result = uri_open(ctx->policy, u, u->path, O_PATH, &fd, e);
	if (result == -WIRE_E_NOT_FOUND)
		return 0; /* nothing there: lists nothing, as a missing directory does */
	if (result < 0)
		goto done;
	if (fstat(fd, &st) < 0) {
		result = err_errno(e, u->text, errno);
		goto done;
	}
	if (S_ISREG(st.st_mode)) {
		/* as a listing of its directory would name it: the normalised path */
		const char *base = strrchr(u->path, '/') + 1;
		size_t dlen = (size_t)(base - u->path);
		memcpy(w->path, u->path, dlen);
		w->path[dlen] = '\0';
		if (!file_is_upload_temp(base, strlen(base)))
			result = file_walk_add(w, dlen, base, 0, &st, e);
		goto done;
	}
	if (!S_ISDIR(st.st_mode) || u->path_len + 1 > WIRE_MAX_URI)
		goto done; /* a device, a socket...: not an object, and holds none */
	memcpy(w->path, u->path, u->path_len);
	w->path[u->path_len] = '/';
	w->path[u->path_len + 1] = '\0';
	*plen = u->path_len + 1;
	result = uri_open(ctx->policy, u, w->path, O_RDONLY | O_DIRECTORY, dirfd, e);
done:
	if (fd >= 0)
		close(fd);
	return result;
}

static int file_list(struct backend_ctx *ctx, const struct uri *u, uint32_t flags,
                     struct backend_list *out, struct err *e)
{
	struct file_walk *w = calloc(1, sizeof(*w));
	int dirfd = -1;
	int result = 0;
	size_t plen = 0;
	if (!w)
		return err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
	w->ctx = ctx;
	w->u = u;
	w->out = out;
	w->recursive = (flags & WIRE_LIST_RECURSIVE) != 0;
	if (u->path[u->path_len - 1] == '/') {
		plen = u->path_len;
		memcpy(w->path, u->path, plen + 1);
		result = uri_open(ctx->policy, u, w->path, O_RDONLY | O_DIRECTORY, &dirfd, e);
		if (result == -WIRE_E_NOT_FOUND)
			result = 0; /* a missing directory lists nothing, as S3 does */
	} else {
		result = file_list_named(ctx, u, w, &dirfd, &plen, e);
	}
	if (result < 0 || dirfd < 0)
		goto done;
	result = file_walk_dir(w, dirfd, plen, 0, e);
	dirfd = -1;
	if (result < 0)
		goto done;
	backend_list_sort(out);
done:
	if (dirfd >= 0)
		close(dirfd);
	free(w);
	return result;
}

/* ---- DELETE ---- */

static int file_remove(struct backend_ctx *ctx, const struct uri *u, struct err *e)
{
	int dirfd = -1;
	const char *base;
	struct stat st;
	int result = uri_open_parent(ctx->policy, u, 0, &dirfd, &base, e);
	if (result < 0)
		goto done;
	if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		result = err_errno(e, u->text, errno);
		goto done;
	}
	if (S_ISDIR(st.st_mode)) {
		result = err_set(e, WIRE_E_INVALID, "%s: is a directory", u->text);
		goto done;
	}
	if (unlinkat(dirfd, base, 0) < 0)
		result = err_errno(e, u->text, errno);
done:
	if (dirfd >= 0)
		close(dirfd);
	return result;
}

/* ---- MKDIR, RMDIR ---- */

static int file_mkdir(struct backend_ctx *ctx, const struct uri *u, struct err *e)
{
	return uri_mkdir(ctx->policy, u, e);
}

/* Remove the empty directory u names (trailing slash or not), never an --allow root. */
static int file_rmdir(struct backend_ctx *ctx, const struct uri *u, struct err *e)
{
	char parent[WIRE_MAX_URI + 1];
	int dirfd = -1;
	struct stat st;
	int result = 0;
	size_t len = u->path_len; /* without the trailing slash ("/" becomes "") */
	if (u->path[len - 1] == '/')
		len--;
	const struct uri_allow *a = uri_policy_match(ctx->policy, u->scheme, u->path);
	if (!a)
		return err_set(e, WIRE_E_PERMISSION, "%s: not under any --allow prefix", u->text);
	if (len + 1 <= a->prefix_len)
		return err_set(e, WIRE_E_PERMISSION,
		               "%s: is the root of the allowed prefix %s: not removed", u->text,
		               a->text);
	size_t slash = len - 1;
	while (u->path[slash] != '/')
		slash--;
	memcpy(parent, u->path, slash + 1);
	parent[slash + 1] = '\0';
	char base[NAME_MAX + 1];
	if (len - slash - 1 > NAME_MAX)
		return err_errno(e, u->text, ENAMETOOLONG);
	memcpy(base, u->path + slash + 1, len - slash - 1);
	base[len - slash - 1] = '\0';
	/* the parent is beneath the same root (it is the root or below it) */
	result = uri_open(ctx->policy, u, parent, O_RDONLY | O_DIRECTORY, &dirfd, e);
	if (result < 0)
		goto done;
	if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		result = err_errno(e, u->text, errno);
		goto done;
	}
	if (!S_ISDIR(st.st_mode)) {
		result = err_set(e, WIRE_E_INVALID, "%s: not a directory%s", u->text,
		                 S_ISLNK(st.st_mode) ? " (a symbolic link)" : "");
		goto done;
	}
	if (unlinkat(dirfd, base, AT_REMOVEDIR) < 0) {
		if (errno == ENOTEMPTY || errno == EEXIST)
			result = err_set(e, WIRE_E_INVALID, "%s: directory not empty", u->text);
		else
			result = err_errno(e, u->text, errno);
	}
done:
	if (dirfd >= 0)
		close(dirfd);
	return result;
}

/* ---- PUT ---- */

static void file_writer_free(struct backend_writer *w, int unlink_tmp)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (unlink_tmp && w->dirfd >= 0 && w->tmp[0])
		unlinkat(w->dirfd, w->tmp, 0);
	if (w->dirfd >= 0)
		close(w->dirfd);
	free(w->base);
	free(w->uri);
	free(w);
}

static int file_put_open(struct backend_ctx *ctx, const struct uri *u, uint64_t size,
                         struct backend_writer **wp, struct err *e)
{
	(void)size;
	const char *base;
	struct stat st;
	uint64_t rnd = 0;
	int result = 0;
	struct backend_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
	w->dirfd = w->fd = -1;
	result = uri_open_parent(ctx->policy, u, 1, &w->dirfd, &base, e);
	if (result < 0)
		goto done;
	if (fstatat(w->dirfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
		result = err_set(e, WIRE_E_INVALID, "%s: is a directory", u->text);
		goto done;
	}
	w->base = strdup(base);
	w->uri = strdup(u->text);
	if (!w->base || !w->uri) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
		goto done;
	}
	if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		rnd = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)w;
	/* hidden, unique, and short enough for NAME_MAX whatever the target's length */
	snprintf(w->tmp, sizeof(w->tmp), ".%.200s" FILE_TMP_TAG "%016" PRIx64 ".tmp", base, rnd);
	w->fd = openat(w->dirfd, w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (w->fd < 0) {
		w->tmp[0] = '\0';
		result = err_errno(e, u->text, errno);
		goto done;
	}
	*wp = w;
	w = NULL;
done:
	file_writer_free(w, 1);
	return result;
}

static int file_put_write(struct backend_writer *w, const struct iovec *iov, int iovcnt,
                          struct err *e)
{
	struct iovec v[64];
	int cnt = 0;
	for (int i = 0; i < iovcnt; i++) {
		if (!iov[i].iov_len)
			continue;
		if (cnt == (int)(sizeof(v) / sizeof(v[0]))) {
			/* flush the batch so far, then continue */
			int rc = file_put_write(w, v, cnt, e);
			if (rc < 0)
				return rc;
			cnt = 0;
		}
		v[cnt++] = iov[i];
	}
	struct iovec *p = v;
	while (cnt > 0) {
		ssize_t k = pwritev(w->fd, p, cnt, (off_t)w->off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return err_errno(e, w->uri, errno);
		w->off += (uint64_t)k;
		size_t left = (size_t)k;
		while (cnt > 0 && left >= p->iov_len) {
			left -= p->iov_len;
			p++;
			cnt--;
		}
		if (cnt > 0) {
			p->iov_base = (uint8_t *)p->iov_base + left;
			p->iov_len -= left;
		}
	}
	return 0;
}

static int file_put_commit(struct backend_writer *w, struct err *e)
{
	int result = 0;
	int renamed = 0;
	if (fsync(w->fd) < 0) {
		result = err_errno(e, w->uri, errno);
		goto done;
	}
	int fd = w->fd;
	w->fd = -1;
	if (close(fd) < 0) {
		result = err_errno(e, w->uri, errno);
		goto done;
	}
	if (renameat(w->dirfd, w->tmp, w->dirfd, w->base) < 0) {
		if (errno == EISDIR)
			result = err_set(e, WIRE_E_INVALID, "%s: is a directory", w->uri);
		else
			result = err_errno(e, w->uri, errno);
		goto done;
	}
	renamed = 1;
	/* the rename is durable only once the directory is */
	if (fsync(w->dirfd) < 0)
		result = err_errno(e, w->uri, errno);
done:
	file_writer_free(w, !renamed);
	return result;
}

static void file_put_abort(struct backend_writer *w)
{
	file_writer_free(w, 1);
}

const struct backend_ops backend_file_ops = {
    .name = "file",
    .stat = file_stat,
    .open_read = file_open_read,
    .read = file_read,
    .whole_crc = file_whole_crc,
    .close_read = file_close_read,
    .list = file_list,
    .remove = file_remove,
    .mkdir = file_mkdir,
    .rmdir = file_rmdir,
    .put_open = file_put_open,
    .put_write = file_put_write,
    .put_commit = file_put_commit,
    .put_abort = file_put_abort,
};

const struct backend_ops backend_direct_ops = {
    .name = "direct",
    .async_get = &direct_async_get,
    .stat = file_stat,
    .list = file_list,
    .remove = file_remove,
    .mkdir = file_mkdir,
    .rmdir = file_rmdir,
    .put_open = file_put_open,
    .put_write = file_put_write,
    .put_commit = file_put_commit,
    .put_abort = file_put_abort,
};
