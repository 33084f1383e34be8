/* crccache.h: the CRC32C of whole local files, remembered by identity.
 *
 * A file:// GET sends its bytes with sendfile, which never passes them through user space;
 * the END frame's CRC32C then costs a second read of every byte (pread into a scratch
 * buffer), which was a third to a half of the server's CPU. Training reads the same files
 * every epoch, so the CRC of a whole file is kept, keyed by what changes whenever the file's
 * bytes do: device, inode, size, mtime and ctime (ctime cannot be set from user space, so a
 * rewrite that restores mtime still misses).
 *
 * Timestamps are coarse (a kernel tick), so a file written in the same tick after we read it
 * would keep its key. As git does with its index ("racily clean" entries), a CRC is stored
 * only for files whose mtime and ctime are at least CRCCACHE_SETTLE_NS older than the moment
 * the CRC was finished, and only if a second fstat still gives the same key.
 *
 * Not covered: a file changed through a shared writable mapping keeps its timestamps until
 * writeback (the kernel stamps only the first write fault of a clean page). A client then
 * gets a CRC32C mismatch error for that GET, never bytes passed off as verified.
 *
 * One table per server, shared by the worker threads under a mutex (a lookup and an insert
 * per whole-object GET: negligible next to the GET). Four-way set associative; a full set
 * loses its least recently used entry. */
#ifndef S3DLIOD_CRCCACHE_H
#define S3DLIOD_CRCCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#define CRCCACHE_DEFAULT_ENTRIES 65536
#define CRCCACHE_SETTLE_NS 2000000000LL /* 2 s: well past any filesystem's timestamp tick */

struct crccache;

struct crccache_key {
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
};

/* A table of about `entries` entries (rounded up to a power of two); NULL when entries is 0
 * (the cache is off) or memory ran out. */
struct crccache *crccache_new(size_t entries);
void crccache_free(struct crccache *cc);

void crccache_key_of(const struct stat *st, struct crccache_key *k);

/* 1 and *crc when the table has k; 0 otherwise (and always for a NULL table). */
int crccache_get(struct crccache *cc, const struct crccache_key *k, uint32_t *crc);

/* Remember crc for k if the file has settled (see top): now_ns is CLOCK_REALTIME when the
 * CRC was finished. */
void crccache_put(struct crccache *cc, const struct crccache_key *k, uint32_t crc,
                  int64_t now_ns);

/* Counters since start (for logs and metrics). */
void crccache_counts(struct crccache *cc, uint64_t *hits, uint64_t *misses, uint64_t *stores);

#endif
