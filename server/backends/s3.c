/* s3.c: the s3:// backend (Amazon S3 and S3-compatible stores), the az:// backend (Azure
 * Blob Storage) and the gs:// backend (Google Cloud Storage, JSON API), asynchronous, on the
 * worker's libcurl multi handle (http.c). They share the request flow; they differ in URLs,
 * signing, listing formats and the large-upload calls (multipart upload; Put Block / Put
 * Block List; one streamed resumable upload), which branch on op->az / op->gs.
 *
 * GCS: bearer token or none (an emulator); metadata and listings are JSON (jansson), read
 * whole per page; a large PUT is a resumable session fed by one streamed PUT whose read
 * callback pauses while the client's next part has not arrived.
 *
 * Azure: Shared Key (HMAC-SHA256 over the string to sign, with OpenSSL) or a SAS token in
 * the query. Signed x-ms-* headers are kept in op (ms_*) so the string to sign and the
 * request agree; ranges go as x-ms-range.
 *
 * Signing is libcurl's CURLOPT_AWS_SIGV4, which signs the path and query exactly as
 * written: so keys are percent-encoded here (RFC 3986, '/' kept), query parameters are
 * sorted and encoded here, and x-amz-content-sha256 is sent as UNSIGNED-PAYLOAD (libcurl
 * cannot hash a streamed body).
 *
 * GET streams the body to the sink as it arrives (the connection pauses the transfer when
 * its client is slow); a retried GET resumes with a Range from the first missing byte.
 * LIST fetches ListObjectsV2 pages one at a time, parses each with expat as it arrives, and
 * hands the page's entries over sorted before asking for the next page. PUT sends objects up
 * to the multipart threshold in one request; larger ones go as a multipart upload with
 * parts in parallel (bounded: put_full tells the connection to stop reading) and are
 * aborted on failure. Every PUT ends with a HEAD that checks the stored size. MKDIR and
 * RMDIR create and delete buckets (see their section). */
#include <ctype.h>
#include <event2/buffer.h>
#include <expat.h>
#include <jansson.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>

#include "backend.h"
#include "cloud.h"
#include "http.h"

#define AZ_VERSION "2021-12-02"

#define S3_URL_MAX (WIRE_MAX_URI * 3 + 1024)
#define S3_LIST_PAGE 1000
#define S3_MAX_PARTS 10000

enum s3_kind { S3_GET, S3_HEAD, S3_LIST, S3_DELETE, S3_PUT, S3_MKDIR, S3_RMDIR };

enum s3_put_state {
	S3_PUT_FILLING, /* parts: waiting for bytes or for an upload id */
	S3_PUT_FINISHING,
	S3_PUT_COMPLETING,
	S3_PUT_VERIFYING,
};

struct s3_part {
	struct backend_op *op;
	int num; /* 1-based */
	uint8_t *buf;
	size_t len;
	int state;   /* 0 filling/queued, 1 in flight, 2 done */
	size_t sent; /* read position while in flight */
	char etag[130];
	struct http_call call;
};

struct backend_op {
	enum s3_kind kind;
	int az;      /* Azure Blob */
	int gs;      /* Google Cloud Storage; neither: S3 */
	int rd_part; /* gs streamed upload: the part being sent */
	/* gs with a service account: a call waiting for the thread's token */
	struct http_call *wait_call;
	struct backend_op *wait_next;
	int waiting;
	int stream_paused; /* gs: its read callback is waiting for a part */
	const char *prov;  /* "s3" or "az", in messages */
	char account[128]; /* az: the storage account */
	/* az: what the next request signs besides URL and method */
	const char *m_method;
	uint64_t m_len;
	const char *m_ctype;
	char ms_range[96];
	int ms_blob_type;
	struct backend_ctx *ctx;
	const struct cloud_s3 *cfg;
	struct backend_sink sink;
	char uri[WIRE_MAX_URI + 1];
	char scheme[8];
	char bucket[WIRE_MAX_URI + 1];
	char key[WIRE_MAX_URI + 1];
	char url[S3_URL_MAX];
	const char *method; /* for the current call */
	struct http_call call;
	int done;
	/* GET */
	uint64_t off, len; /* len UINT64_MAX: to the end */
	uint64_t total, delivered, pos;
	int header_sent, got_hdr, range_err;
	struct backend_info info;
	/* LIST */
	int recursive;
	XML_Parser xp;
	char xpath[256];
	size_t xpath_len;
	char *xtext;
	size_t xtext_len, xtext_cap;
	char ent_key[WIRE_MAX_URI + 1];
	uint64_t ent_size;
	int64_t ent_mtime;
	char *token; /* next continuation token */
	int truncated, paused, between_pages, xml_bad;
	int page_limit; /* entries asked per page; 0: the configured size */
	struct backend_list page;
	/* MKDIR: the store's "already exists" answer, reported if the bucket is not ours */
	struct err conflict;
	/* DELETE: a HEAD first, so a missing object is NOT_FOUND as with file:// */
	int delete_stage;
	/* PUT */
	uint64_t size, received;
	int multipart;
	enum s3_put_state pstate;
	uint8_t *single; /* single-request body */
	size_t single_sent;
	char upload_id[1024];
	int creating; /* CreateMultipartUpload in flight */
	struct s3_part *parts;
	int nparts, filled, in_flight, full_signalled;
	uint64_t part_size;
	char *complete_xml;
	size_t complete_len, complete_sent;
};

struct gs_auth {
	struct backend_ctx *ctx;
	char token[4096];
	time_t refresh_at; /* fetch a new one from here on */
	int fetching;
	struct http_call call;
	char *post; /* the exchange's form body */
	size_t post_len, post_sent;
	char *resp;
	size_t resp_len;
	struct backend_op *waiters;
};

/* ---- common ---- */

static int s3_split(const struct uri *u, struct backend_op *op, struct err *e)
{
	const char *path = u->path;
	size_t path_len = u->path_len;
	if (op->az) {
		/* account/container/blob */
		const char *a = memchr(path, '/', path_len);
		size_t alen = a ? (size_t)(a - path) : path_len;
		if (!a || alen == 0 || alen >= sizeof(op->account))
			return err_set(e, WIRE_E_INVALID,
			               "%s: expected az://account/container/blob", u->text);
		memcpy(op->account, path, alen);
		op->account[alen] = '\0';
		path = a + 1;
		path_len -= alen + 1;
	}
	const char *slash = memchr(path, '/', path_len);
	size_t blen = slash ? (size_t)(slash - path) : path_len;
	if (blen == 0 || blen > 255)
		return err_set(e, WIRE_E_INVALID, "%s: no %s name", u->text,
		               op->az ? "container" : "bucket");
	memcpy(op->bucket, path, blen);
	op->bucket[blen] = '\0';
	snprintf(op->key, sizeof(op->key), "%s", slash ? slash + 1 : "");
	snprintf(op->uri, sizeof(op->uri), "%s", u->text);
	snprintf(op->scheme, sizeof(op->scheme), "%s", u->scheme_name);
	return 0;
}

static struct backend_op *s3_op_new(struct backend_ctx *ctx, const struct uri *u, enum s3_kind kind,
                                    const struct backend_sink *s, struct err *e)
{
	struct backend_op *op = calloc(1, sizeof(*op));
	if (!op) {
		err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
		return NULL;
	}
	op->kind = kind;
	op->az = u->scheme == URI_AZ;
	op->gs = u->scheme == URI_GS;
	op->prov = op->az ? "az" : op->gs ? "gs" : "s3";
	op->ctx = ctx;
	op->cfg = &ctx->cloud->s3;
	op->sink = *s;
	op->call.arg = op;
	if (s3_split(u, op, e) < 0) {
		free(op);
		return NULL;
	}
	return op;
}

/* url = endpoint + bucket + encoded key (or key_override) + query (already sorted/encoded) */
static int s3_build_url(struct backend_op *op, const char *key, const char *query, struct err *e)
{
	char ekey[WIRE_MAX_URI * 3 + 1];
	if (http_encode(key, strlen(key), 1, ekey, sizeof(ekey)) < 0)
		return err_set(e, WIRE_E_INVALID, "%s: key too long", op->uri);
	const struct cloud_s3 *c = op->cfg;
	int n;
	const char *q = query && *query ? "?" : "";
	if (!query)
		query = "";
	if (op->gs) {
		/* the object name is one path segment: '/' encoded too */
		char eobj[WIRE_MAX_URI * 3 + 1];
		if (http_encode(key, strlen(key), 0, eobj, sizeof(eobj)) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: name too long", op->uri);
		n = snprintf(op->url, sizeof(op->url), "%s/storage/v1/b/%s/o%s%s%s%s",
		             op->ctx->cloud->gs.base, op->bucket, *key ? "/" : "", eobj, q, query);
		if (n < 0 || (size_t)n >= sizeof(op->url))
			return err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
		return 0;
	}
	if (op->az) {
		const struct cloud_az *az = &op->ctx->cloud->az;
		const char *sas = !az->key_len && az->sas ? az->sas : "";
		const char *amp = *sas ? (*query ? "&" : "?") : "";
		if (az->endpoint)
			n = snprintf(op->url, sizeof(op->url), "%s/%s%s%s%s%s%s%s", az->endpoint,
			             op->bucket, *key ? "/" : "", ekey, q, query, amp, sas);
		else
			n = snprintf(op->url, sizeof(op->url),
			             "https://%s.blob.core.windows.net/%s%s%s%s%s%s%s", op->account,
			             op->bucket, *key ? "/" : "", ekey, q, query, amp, sas);
		if (n < 0 || (size_t)n >= sizeof(op->url))
			return err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
		return 0;
	}
	/* bucket-level requests go to "/bucket" (some stores refuse the signature of "/bucket/") */
	const char *ks = *key ? "/" : "";
	if (c->endpoint && c->path_style)
		n = snprintf(op->url, sizeof(op->url), "%s/%s%s%s%s%s", c->endpoint, op->bucket, ks,
		             ekey, q, query);
	else if (c->endpoint) {
		const char *sep = strstr(c->endpoint, "://");
		const char *host = sep ? sep + 3 : c->endpoint;
		n = snprintf(op->url, sizeof(op->url), "%.*s%s.%s/%s%s%s",
		             (int)(host - c->endpoint), c->endpoint, op->bucket, host, ekey, q,
		             query);
	} else if (c->path_style)
		n = snprintf(op->url, sizeof(op->url), "https://s3.%s.amazonaws.com/%s%s%s%s%s",
		             c->region, op->bucket, ks, ekey, q, query);
	else
		n = snprintf(op->url, sizeof(op->url), "https://%s.s3.%s.amazonaws.com/%s%s%s",
		             op->bucket, c->region, ekey, q, query);
	if (n < 0 || (size_t)n >= sizeof(op->url))
		return err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
	return 0;
}

static int s3_hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decode s[0..n) into out (NUL-terminated); -1: too long. */
static int s3_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (o + 1 >= cap)
			return -1;
		if (s[i] == '%' && i + 2 < n && s3_hexval((unsigned char)s[i + 1]) >= 0 &&
		    s3_hexval((unsigned char)s[i + 2]) >= 0) {
			out[o++] = (char)(s3_hexval((unsigned char)s[i + 1]) * 16 +
			                  s3_hexval((unsigned char)s[i + 2]));
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return 0;
}

struct az_param {
	const char *p;
	size_t n;
};

static int az_param_cmp(const void *a, const void *b)
{
	const struct az_param *x = a, *y = b;
	size_t nx = strcspn(x->p, "="), ny = strcspn(y->p, "=");
	if (nx > x->n)
		nx = x->n;
	if (ny > y->n)
		ny = y->n;
	int c = strncmp(x->p, y->p, nx < ny ? nx : ny);
	return c ? c : (nx > ny) - (nx < ny);
}

/* Azure Shared Key: the Authorization header for the request in op->url. */
static int az_sign(struct backend_op *op, struct http_call *c, const char *date, struct err *e)
{
	const struct cloud_az *az = &op->ctx->cloud->az;
	const char *account = az->account ? az->account : op->account;
	size_t cap = S3_URL_MAX * 2 + 2048;
	char *sts = malloc(cap), *dec = malloc(S3_URL_MAX);
	int result = 0;
	if (!sts || !dec) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	char len[32] = "";
	if (op->m_len)
		snprintf(len, sizeof(len), "%" PRIu64, op->m_len);
	size_t n = (size_t)snprintf(sts, cap, "%s\n\n\n%s\n\n%s\n\n\n\n\n\n\n", op->m_method, len,
	                            op->m_ctype ? op->m_ctype : "");
	if (op->ms_blob_type)
		n += (size_t)snprintf(sts + n, cap - n, "x-ms-blob-type:BlockBlob\n");
	n += (size_t)snprintf(sts + n, cap - n, "x-ms-date:%s\n", date);
	if (op->ms_range[0])
		n += (size_t)snprintf(sts + n, cap - n, "x-ms-range:%s\n", op->ms_range);
	n += (size_t)snprintf(sts + n, cap - n, "x-ms-version:%s\n", AZ_VERSION);
	/* "/account" + the path as sent + "\nname:value" per query parameter, sorted */
	const char *p = strstr(op->url, "://");
	p = p ? strchr(p + 3, '/') : NULL;
	if (!p)
		p = "/";
	size_t plen = strcspn(p, "?");
	n += (size_t)snprintf(sts + n, cap - n, "/%s%.*s", account, (int)plen, p);
	if (p[plen] == '?') {
		struct az_param v[16];
		size_t nv = 0;
		const char *q = p + plen + 1;
		while (*q && nv < 16) {
			size_t ql = strcspn(q, "&");
			v[nv++] = (struct az_param){q, ql};
			q += ql;
			if (*q == '&')
				q++;
		}
		qsort(v, nv, sizeof(v[0]), az_param_cmp);
		for (size_t i = 0; i < nv; i++) {
			size_t kl = strcspn(v[i].p, "=");
			if (kl > v[i].n)
				kl = v[i].n;
			const char *val = kl < v[i].n ? v[i].p + kl + 1 : "";
			size_t vl = kl < v[i].n ? v[i].n - kl - 1 : 0;
			if (s3_decode(val, vl, dec, S3_URL_MAX) < 0 || n + kl + vl + 3 >= cap) {
				result = err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
				goto done;
			}
			n += (size_t)snprintf(sts + n, cap - n, "\n%.*s:%s", (int)kl, v[i].p, dec);
		}
	}
	if (n >= cap) {
		result = err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
		goto done;
	}
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	if (!HMAC(EVP_sha256(), az->key, (int)az->key_len, (const unsigned char *)sts, n, mac,
	          &maclen)) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: HMAC failed", op->uri);
		goto done;
	}
	char b64[128];
	EVP_EncodeBlock((unsigned char *)b64, mac, (int)maclen);
	if (http_header(c, "Authorization: SharedKey %s:%s", account, b64) < 0)
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
done:
	free(sts);
	free(dec);
	return result;
}

static int az_setup_common(struct backend_op *op, struct http_call *c, CURL *easy, struct err *e)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	curl_easy_setopt(easy, CURLOPT_URL, op->url);
	if (http_header(c, "x-ms-date: %s", date) < 0 ||
	    http_header(c, "x-ms-version: %s", AZ_VERSION) < 0 ||
	    (op->ms_range[0] && http_header(c, "x-ms-range: %s", op->ms_range) < 0) ||
	    (op->ms_blob_type && http_header(c, "x-ms-blob-type: BlockBlob") < 0))
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	if (op->ctx->cloud->az.key_len)
		return az_sign(op, c, date, e);
	return 0;
}

/* URL, signing, the headers every request carries. The setup functions set m_method,
 * m_len and m_ctype first (Azure signs them). */
static int s3_setup_common(struct backend_op *op, struct http_call *c, CURL *easy, struct err *e)
{
	const struct cloud_s3 *cfg = op->cfg;
	if (op->gs) {
		if (!strstr(op->url, "://"))
			return err_set(e, WIRE_E_INTERNAL, "%s: no URL", op->uri);
		curl_easy_setopt(easy, CURLOPT_URL, op->url);
		const char *tok = op->ctx->cloud->gs.token;
		if (op->ctx->gs_auth && op->ctx->gs_auth->token[0])
			tok = op->ctx->gs_auth->token;
		if (tok && http_header(c, "Authorization: Bearer %s", tok) < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		return 0;
	}
	if (op->az) {
		int rc = az_setup_common(op, c, easy, e);
		op->m_method = "GET";
		op->m_len = 0;
		op->m_ctype = NULL;
		op->ms_range[0] = '\0';
		op->ms_blob_type = 0;
		return rc;
	}
	curl_easy_setopt(easy, CURLOPT_URL, op->url);
	if (cfg->key_id) {
		char sig[128];
		snprintf(sig, sizeof(sig), "aws:amz:%s:s3", cfg->region);
		curl_easy_setopt(easy, CURLOPT_AWS_SIGV4, sig);
		curl_easy_setopt(easy, CURLOPT_USERNAME, cfg->key_id);
		curl_easy_setopt(easy, CURLOPT_PASSWORD, cfg->secret);
		if (http_header(c, "x-amz-content-sha256: UNSIGNED-PAYLOAD") < 0 ||
		    (cfg->token && http_header(c, "x-amz-security-token: %s", cfg->token) < 0))
			return err_set(e, WIRE_E_INTERNAL, "%s: out of memory", op->uri);
	}
	return 0;
}

/* The text of <tag> in an XML error body, or "" */
static void s3_xml_field(const char *body, const char *tag, char *out, size_t cap)
{
	char open[64];
	out[0] = '\0';
	if (!body)
		return;
	snprintf(open, sizeof(open), "<%s>", tag);
	const char *p = strstr(body, open);
	if (!p)
		return;
	p += strlen(open);
	const char *end = strchr(p, '<');
	size_t n = end ? (size_t)(end - p) : strlen(p);
	if (n >= cap)
		n = cap - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

static uint32_t s3_status_code(long status)
{
	switch (status) {
	case 404: return WIRE_E_NOT_FOUND;
	case 401:
	case 403: return WIRE_E_PERMISSION;
	case 416: return WIRE_E_RANGE;
	case 400:
	case 411: return WIRE_E_INVALID;
	case 408: return WIRE_E_TIMEOUT;
	default: return WIRE_E_BACKEND;
	}
}

/* The error for a finished call: a transport failure (rc < 0) or a non-2xx answer. */
static int s3_call_error(struct backend_op *op, const struct http_call *c, int rc,
                         const struct err *ce, const char *what, struct err *e)
{
	if (rc < 0)
		return err_set(e, ce->code, "%s: %s %s failed: %s", op->uri, op->prov, what,
		               ce->msg);
	char code[128], msg[512];
	s3_xml_field(c->ebody, "Code", code, sizeof(code));
	s3_xml_field(c->ebody, "Message", msg, sizeof(msg));
	if (op->gs && c->ebody) {
		/* {"error": {"code": 404, "message": "...", "errors": [{"reason": "notFound"}]}} */
		json_t *root = json_loads(c->ebody, 0, NULL);
		json_t *er = root ? json_object_get(root, "error") : NULL;
		const char *m = json_string_value(json_object_get(er, "message"));
		const char *r = json_string_value(
		    json_object_get(json_array_get(json_object_get(er, "errors"), 0), "reason"));
		if (m)
			snprintf(msg, sizeof(msg), "%s", m);
		else if (!root && c->ebody_len < 200)
			snprintf(msg, sizeof(msg), "%s", c->ebody); /* a plain-text answer */
		if (r)
			snprintf(code, sizeof(code), "%s", r);
		json_decref(root);
	}
	if (!code[0] && op->gs && c->status == 404)
		snprintf(code, sizeof(code), "notFound");
	if (!code[0])
		http_resp_header(c, "x-ms-error-code", code, sizeof(code));
	if (msg[0]) {
		/* Azure puts a request id and a time on lines after the message */
		char *nl = strchr(msg, '\n');
		if (nl)
			*nl = '\0';
	}
	if (!code[0] && c->status == 404)
		snprintf(code, sizeof(code), "NoSuchKey");
	if (!code[0] && c->status == 403)
		snprintf(code, sizeof(code), "AccessDenied");
	return err_set(e, s3_status_code(c->status), "%s: %s %s: HTTP %ld %s%s%s", op->uri,
	               op->prov, what, c->status, code[0] ? code : "error", msg[0] ? ": " : "",
	               msg);
}

static void s3_op_free(struct backend_op *op);

/* Report the end and free the operation (the sink must not be called afterwards). */
static void s3_finish(struct backend_op *op, int rc, const struct err *e)
{
	struct backend_sink s = op->sink;
	struct err copy;
	if (e)
		copy = *e;
	s3_op_free(op);
	s.done(s.arg, rc, e ? &copy : NULL);
}

static int64_t s3_parse_http_date(const char *s)
{
	time_t t = curl_getdate(s, NULL);
	return t < 0 ? 0 : (int64_t)t * 1000000000;
}

static int64_t s3_parse_iso_date(const char *s)
{
	struct tm tm = {0};
	int ms = 0;
	if (sscanf(s, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
	           &tm.tm_min, &tm.tm_sec, &ms) < 6)
		return 0;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm) * 1000000000 + (int64_t)ms * 1000000;
}

/* Object facts from response headers. */
static void s3_info_from_headers(const struct http_call *c, struct backend_info *info)
{
	char buf[256];
	memset(info, 0, sizeof(*info));
	if (http_resp_header(c, "Last-Modified", buf, sizeof(buf)) == 0)
		info->mtime_ns = s3_parse_http_date(buf);
	if (http_resp_header(c, "ETag", buf, sizeof(buf)) == 0) {
		const char *p = buf;
		size_t n = strlen(p);
		if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
			p++;
			n -= 2;
		}
		if (n < sizeof(info->etag)) {
			memcpy(info->etag, p, n);
			info->etag[n] = '\0';
			info->etag_len = (uint32_t)n;
		}
	}
	if (http_resp_header(c, "Content-Length", buf, sizeof(buf)) == 0)
		info->size = strtoull(buf, NULL, 10);
}

/* ---- GCS service-account tokens ----
 *
 * Each worker thread keeps its own token: a JWT signed with the key (RS256) is exchanged at
 * token_uri for an access token, which is used until shortly before it expires. Calls that
 * need a token while none is fresh wait in a list and start when it arrives (or fail with
 * the exchange's error). */

static void s3_finish(struct backend_op *op, int rc, const struct err *e);

static void gs_b64url(const unsigned char *in, size_t n, char *out)
{
	int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	int o = 0;
	for (int i = 0; i < len; i++) {
		if (out[i] == '=')
			break;
		out[o++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	}
	out[o] = '\0';
}

/* The signed JWT assertion, malloc'd; NULL with e on failure. */
static char *gs_jwt(const struct cloud_gs *gs, struct err *e)
{
	char claims[2048], hb64[64], cb64[2800], *jwt = NULL;
	unsigned char sig[1024];
	size_t siglen = sizeof(sig);
	time_t now = time(NULL);
	int n = snprintf(claims, sizeof(claims),
	                 "{\"iss\":\"%s\",\"scope\":\"https://www.googleapis.com/auth/"
	                 "devstorage.read_write\",\"aud\":\"%s\",\"iat\":%lld,\"exp\":%lld}",
	                 gs->sa_email, gs->token_uri, (long long)now, (long long)now + 3600);
	if (n < 0 || (size_t)n >= sizeof(claims)) {
		err_set(e, WIRE_E_INVALID, "gs: service account email or token_uri too long");
		return NULL;
	}
	const char *hdr = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	gs_b64url((const unsigned char *)hdr, strlen(hdr), hb64);
	gs_b64url((const unsigned char *)claims, (size_t)n, cb64);
	char input[3000];
	snprintf(input, sizeof(input), "%s.%s", hb64, cb64);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, gs->sa_key) != 1 ||
	    EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1) {
		err_set(e, WIRE_E_INTERNAL, "gs: cannot sign the token request (RS256)");
		goto done;
	}
	char sb64[1400];
	gs_b64url(sig, siglen, sb64);
	if (asprintf(&jwt, "%s.%s", input, sb64) < 0) {
		jwt = NULL;
		err_set(e, WIRE_E_INTERNAL, "out of memory");
	}
done:
	EVP_MD_CTX_free(md);
	return jwt;
}

static size_t gs_auth_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct gs_auth *a = arg;
	size_t room = size * nmemb, left = a->post_len - a->post_sent;
	size_t n = left < room ? left : room;
	memcpy(dst, a->post + a->post_sent, n);
	a->post_sent += n;
	return n;
}

static size_t gs_auth_body(struct http_call *c, const char *p, size_t n)
{
	struct gs_auth *a = c->arg;
	if (a->resp_len + n > 64 * 1024)
		return 0;
	char *v = realloc(a->resp, a->resp_len + n + 1);
	if (!v)
		return 0;
	a->resp = v;
	memcpy(a->resp + a->resp_len, p, n);
	a->resp_len += n;
	a->resp[a->resp_len] = '\0';
	return n;
}

static int gs_auth_setup(struct http_call *c, CURL *easy, struct err *e)
{
	struct gs_auth *a = c->arg;
	(void)e;
	a->post_sent = 0;
	a->resp_len = 0;
	curl_easy_setopt(easy, CURLOPT_URL, a->ctx->cloud->gs.token_uri);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, gs_auth_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, a);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)a->post_len);
	if (http_header(c, "Content-Type: application/x-www-form-urlencoded") < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return 0;
}

/* The token arrived (rc 0) or could not be had: start or fail the waiting calls. */
static void gs_auth_release(struct gs_auth *a, int rc, const struct err *e)
{
	struct backend_op *op = a->waiters;
	a->waiters = NULL;
	while (op) {
		struct backend_op *next = op->wait_next;
		struct http_call *call = op->wait_call;
		op->waiting = 0;
		op->wait_next = NULL;
		struct err se;
		if (rc < 0) {
			err_set(&se, e->code, "%s: %s", op->uri, e->msg);
			s3_finish(op, -(int)se.code, &se);
		} else if (http_start(a->ctx->http, call, &se) < 0) {
			s3_finish(op, -(int)se.code, &se);
		}
		op = next;
	}
}

static void gs_auth_done(struct http_call *c, int rc, const struct err *ce)
{
	struct gs_auth *a = c->arg;
	struct err e;
	a->fetching = 0;
	free(a->post);
	a->post = NULL;
	if (rc < 0) {
		err_set(&e, ce->code, "gs: token exchange at %s failed: %s",
		        a->ctx->cloud->gs.token_uri, ce->msg);
		gs_auth_release(a, -(int)e.code, &e);
		return;
	}
	json_t *root = c->status == 200 && a->resp ? json_loads(a->resp, 0, NULL) : NULL;
	const char *tok = json_string_value(json_object_get(root, "access_token"));
	json_int_t ttl = json_integer_value(json_object_get(root, "expires_in"));
	if (!tok || strlen(tok) >= sizeof(a->token)) {
		char m[300] = "";
		const char *body = c->ebody ? c->ebody : a->resp ? a->resp : "";
		snprintf(m, sizeof(m), "%s", body);
		err_set(&e,
		        c->status == 400 || c->status == 401 ? WIRE_E_PERMISSION : WIRE_E_BACKEND,
		        "gs: token exchange at %s: HTTP %ld %s", a->ctx->cloud->gs.token_uri,
		        c->status, m);
		json_decref(root);
		gs_auth_release(a, -(int)e.code, &e);
		return;
	}
	snprintf(a->token, sizeof(a->token), "%s", tok);
	if (ttl <= 0)
		ttl = 3600;
	/* refresh a little before expiry: 5 minutes, or half the lifetime if shorter */
	json_int_t margin = ttl / 2 < 300 ? ttl / 2 : 300;
	a->refresh_at = time(NULL) + (time_t)(ttl - margin);
	json_decref(root);
	gs_auth_release(a, 0, NULL);
}

static int gs_auth_fetch(struct gs_auth *a, struct err *e)
{
	char *jwt = gs_jwt(&a->ctx->cloud->gs, e);
	if (!jwt)
		return -(int)e->code;
	free(a->post);
	int n = asprintf(&a->post,
	                 "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer"
	                 "&assertion=%s",
	                 jwt);
	free(jwt);
	if (n < 0) {
		a->post = NULL;
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	}
	a->post_len = (size_t)n;
	http_cancel(&a->call);
	memset(&a->call, 0, sizeof(a->call));
	a->call.arg = a;
	a->call.setup = gs_auth_setup;
	a->call.on_body = gs_auth_body;
	a->call.on_done = gs_auth_done;
	int rc = http_start(a->ctx->http, &a->call, e);
	if (rc == 0)
		a->fetching = 1;
	return rc;
}

/* http_start, but a GCS call made with a service account first waits for a fresh token. */
static int s3_http_start(struct backend_op *op, struct http_call *call, struct err *e)
{
	struct backend_ctx *ctx = op->ctx;
	if (!op->gs || !ctx->cloud->gs.sa_key)
		return http_start(ctx->http, call, e);
	if (!ctx->gs_auth) {
		ctx->gs_auth = calloc(1, sizeof(*ctx->gs_auth));
		if (!ctx->gs_auth)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		ctx->gs_auth->ctx = ctx;
	}
	struct gs_auth *a = ctx->gs_auth;
	if (a->token[0] && time(NULL) < a->refresh_at)
		return http_start(ctx->http, call, e);
	if (!a->fetching) {
		int rc = gs_auth_fetch(a, e);
		if (rc < 0)
			return rc;
	}
	op->wait_call = call;
	op->waiting = 1;
	op->wait_next = a->waiters;
	a->waiters = op;
	return 0;
}

static void gs_auth_forget(struct backend_op *op)
{
	if (!op->waiting)
		return;
	struct backend_op **pp = &op->ctx->gs_auth->waiters;
	while (*pp && *pp != op)
		pp = &(*pp)->wait_next;
	if (*pp)
		*pp = op->wait_next;
	op->waiting = 0;
}

void backend_remote_ctx_free(struct backend_ctx *ctx)
{
	struct gs_auth *a = ctx->gs_auth;
	if (!a)
		return;
	http_cancel(&a->call);
	free(a->post);
	free(a->resp);
	OPENSSL_cleanse(a->token, sizeof(a->token));
	free(a);
	ctx->gs_auth = NULL;
}

/* GCS object metadata (JSON) into info; -1 when it is not that. */
static int gs_info_from_json(const char *body, struct backend_info *info)
{
	memset(info, 0, sizeof(*info));
	json_t *root = body ? json_loads(body, 0, NULL) : NULL;
	const char *size = json_string_value(json_object_get(root, "size"));
	if (!size) {
		json_decref(root);
		return -1;
	}
	info->size = strtoull(size, NULL, 10);
	const char *upd = json_string_value(json_object_get(root, "updated"));
	if (upd)
		info->mtime_ns = s3_parse_iso_date(upd);
	const char *etag = json_string_value(json_object_get(root, "etag"));
	if (etag && strlen(etag) < sizeof(info->etag)) {
		snprintf(info->etag, sizeof(info->etag), "%s", etag);
		info->etag_len = (uint32_t)strlen(etag);
	}
	json_decref(root);
	return 0;
}

/* What a finished HEAD (gs: metadata GET) says about the object. */
static int s3_info_of(struct backend_op *op, const struct http_call *c, struct backend_info *info,
                      struct err *e)
{
	if (!op->gs) {
		s3_info_from_headers(c, info);
		return 0;
	}
	if (gs_info_from_json(op->xtext, info) < 0)
		return err_set(e, WIRE_E_BACKEND, "%s: gs: unreadable object metadata", op->uri);
	return 0;
}

/* ---- HEAD (stat; also the size check after a PUT and the first step of DELETE) ---- */

static int s3_setup_head(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_build_url(op, op->key, NULL, e);
	if (rc < 0)
		return rc;
	if (op->gs)
		op->xtext_len = 0; /* GCS: the metadata is a JSON GET */
	else
		curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
	op->m_method = "HEAD";
	return s3_setup_common(op, c, easy, e);
}

static void s3_put_verified(struct backend_op *op, int rc, const struct err *ce);
static size_t s3_collect_body(struct http_call *c, const char *p, size_t n);
static void s3_delete_after_head(struct backend_op *op, int rc, const struct err *ce);
static void s3_get_after_head(struct backend_op *op, int rc, const struct err *ce);

static void s3_head_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (op->kind == S3_PUT) {
		s3_put_verified(op, rc, ce);
		return;
	}
	if (op->kind == S3_DELETE) {
		s3_delete_after_head(op, rc, ce);
		return;
	}
	if (op->kind == S3_GET) {
		s3_get_after_head(op, rc, ce);
		return;
	}
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "HEAD", &e);
		s3_finish(op, rc, &e);
		return;
	}
	struct backend_info info;
	if ((rc = s3_info_of(op, c, &info, &e)) < 0) {
		s3_finish(op, rc, &e);
		return;
	}
	op->sink.header(op->sink.arg, info.size, &info);
	s3_finish(op, 0, NULL);
}

static int s3_start_head(struct backend_op *op, struct err *e)
{
	http_cancel(&op->call);
	memset(&op->call, 0, sizeof(op->call));
	op->call.arg = op;
	op->call.setup = s3_setup_head;
	op->call.on_done = s3_head_done;
	if (op->gs)
		op->call.on_body = s3_collect_body;
	return s3_http_start(op, &op->call, e);
}

static int s3_stat(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
                   struct backend_op **out, struct err *e)
{
	struct backend_op *op = s3_op_new(ctx, u, S3_HEAD, s, e);
	if (!op)
		return -e->code;
	if (!op->key[0]) {
		free(op);
		return err_set(e, WIRE_E_INVALID, "%s: is a bucket, not an object", u->text);
	}
	int rc = s3_start_head(op, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

/* ---- GET ---- */

static int s3_setup_get(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_build_url(op, op->key, op->gs ? "alt=media" : NULL, e);
	if (rc < 0)
		return rc;
	c->streaming = 1;
	op->pos = 0;
	op->got_hdr = 0;
	uint64_t start = op->off + op->delivered;
	char range[96] = "";
	if (op->header_sent) {
		snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, start,
		         op->off + op->total - 1);
	} else if (op->len != UINT64_MAX && op->len > 0) {
		uint64_t last = op->off + op->len - 1;
		if (last < op->off)
			last = UINT64_MAX - 1;
		snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, start, last);
	} else if (start > 0) {
		snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", start);
	}
	if (range[0] && op->az)
		memcpy(op->ms_range, range, sizeof(range)); /* signed as x-ms-range */
	else if (range[0] && http_header(c, "Range: %s", range) < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	op->m_method = "GET";
	return s3_setup_common(op, c, easy, e);
}

/* First bytes of a 2xx: learn the object size and the reply's length. */
static void s3_get_header(struct backend_op *op, struct http_call *c)
{
	char buf[256];
	s3_info_from_headers(c, &op->info);
	if (c->status == 206 && http_resp_header(c, "Content-Range", buf, sizeof(buf)) == 0) {
		/* "bytes a-b/total" */
		const char *sl = strchr(buf, '/');
		uint64_t a = strtoull(buf + 6, NULL, 10);
		op->pos = a;
		if (sl && sl[1] != '*')
			op->info.size = strtoull(sl + 1, NULL, 10);
	} else {
		op->pos = 0; /* a whole object (some stores ignore ranges they dislike) */
	}
	if (op->header_sent)
		return;
	if (op->off > op->info.size) {
		op->range_err = 1; /* a store that ignored an unsatisfiable range */
		return;
	}
	uint64_t avail = op->info.size > op->off ? op->info.size - op->off : 0;
	op->total = op->len < avail ? op->len : avail;
	op->header_sent = 1;
	op->sink.header(op->sink.arg, op->total, &op->info);
}

static size_t s3_get_body(struct http_call *c, const char *p, size_t n)
{
	struct backend_op *op = c->arg;
	size_t taken = n;
	if (!op->got_hdr) {
		op->got_hdr = 1; /* the first bytes of this attempt: where do they start? */
		s3_get_header(op, c);
	}
	if (op->range_err)
		return 0;                        /* abort the transfer: s3_get_done reports */
	uint64_t want = op->off + op->delivered; /* object offset of the next byte we need */
	if (op->pos < want) {
		uint64_t skip = want - op->pos;
		if (skip >= n) {
			op->pos += n;
			return taken;
		}
		p += skip;
		n -= (size_t)skip;
		op->pos += skip;
	}
	uint64_t left = op->total - op->delivered;
	if (n > left)
		n = (size_t)left;
	if (n) {
		op->pos += n;
		op->delivered += n;
		op->sink.data(op->sink.arg, p, n);
	}
	return taken;
}

static void s3_get_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc == 0 && c->status == 416 && !op->header_sent) {
		/* past the end, or exactly at it (an empty reply): ask the size */
		rc = s3_start_head(op, &e);
		if (rc < 0)
			s3_finish(op, rc, &e);
		return;
	}
	if (op->range_err) {
		err_set(&e, WIRE_E_RANGE,
		        "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)", op->uri,
		        op->off, op->info.size);
		s3_finish(op, -WIRE_E_RANGE, &e);
		return;
	}
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "GET", &e);
		s3_finish(op, rc, &e);
		return;
	}
	if (!op->got_hdr)
		s3_get_header(op, c); /* no body at all */
	if (op->range_err) {
		err_set(&e, WIRE_E_RANGE,
		        "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)", op->uri,
		        op->off, op->info.size);
		s3_finish(op, -WIRE_E_RANGE, &e);
		return;
	}
	if (op->delivered < op->total) {
		if (c->attempt < op->ctx->cloud->http.retries) {
			/* the body ended early: ask for the rest */
			c->attempt++;
			if (s3_http_start(op, c, &e) == 0)
				return;
		} else {
			err_set(&e, WIRE_E_BACKEND,
			        "%s: %s GET: body ended after %" PRIu64 " of %" PRIu64 " bytes",
			        op->uri, op->prov, op->delivered, op->total);
		}
		s3_finish(op, -(int)e.code, &e);
		return;
	}
	s3_finish(op, 0, NULL);
}

static void s3_get_after_head(struct backend_op *op, int rc, const struct err *ce)
{
	struct err e;
	struct http_call *c = &op->call;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "HEAD", &e);
		s3_finish(op, rc, &e);
		return;
	}
	if ((rc = s3_info_of(op, c, &op->info, &e)) < 0) {
		s3_finish(op, rc, &e);
		return;
	}
	if (op->off > op->info.size) {
		err_set(&e, WIRE_E_RANGE,
		        "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)", op->uri,
		        op->off, op->info.size);
		s3_finish(op, -WIRE_E_RANGE, &e);
		return;
	}
	op->total = 0;
	op->header_sent = 1;
	op->sink.header(op->sink.arg, 0, &op->info);
	s3_finish(op, 0, NULL);
}

static int s3_get(struct backend_ctx *ctx, const struct uri *u, uint64_t off, uint64_t len,
                  const struct backend_sink *s, struct backend_op **out, struct err *e)
{
	struct backend_op *op = s3_op_new(ctx, u, S3_GET, s, e);
	if (!op)
		return -e->code;
	if (!op->key[0]) {
		free(op);
		return err_set(e, WIRE_E_INVALID, "%s: is a bucket, not an object", u->text);
	}
	op->off = off;
	op->len = len;
	op->call.setup = s3_setup_get;
	op->call.on_body = s3_get_body;
	op->call.on_done = s3_get_done;
	int rc = s3_http_start(op, &op->call, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

/* ---- LIST ---- */

static void XMLCALL s3_xml_start(void *arg, const XML_Char *name, const XML_Char **attrs)
{
	(void)attrs;
	struct backend_op *op = arg;
	size_t n = strlen(name);
	if (op->xpath_len + n + 2 < sizeof(op->xpath)) {
		op->xpath[op->xpath_len++] = '/';
		memcpy(op->xpath + op->xpath_len, name, n + 1);
		op->xpath_len += n;
	} else {
		op->xml_bad = 1;
	}
	op->xtext_len = 0;
}

static void XMLCALL s3_xml_text(void *arg, const XML_Char *s, int len)
{
	struct backend_op *op = arg;
	if (op->xtext_len + (size_t)len + 1 > op->xtext_cap) {
		size_t cap = op->xtext_cap ? op->xtext_cap * 2 : 256;
		while (cap < op->xtext_len + (size_t)len + 1)
			cap *= 2;
		if (cap > 1 << 20) {
			op->xml_bad = 1;
			return;
		}
		char *v = realloc(op->xtext, cap);
		if (!v) {
			op->xml_bad = 1;
			return;
		}
		op->xtext = v;
		op->xtext_cap = cap;
	}
	memcpy(op->xtext + op->xtext_len, s, (size_t)len);
	op->xtext_len += (size_t)len;
	op->xtext[op->xtext_len] = '\0';
}

static void s3_list_add(struct backend_op *op, const char *key, uint64_t size, int64_t mtime,
                        int is_prefix)
{
	char uri[WIRE_MAX_URI * 2];
	int n = op->az ? snprintf(uri, sizeof(uri), "%s://%s/%s/%s", op->scheme, op->account,
	                          op->bucket, key)
	               : snprintf(uri, sizeof(uri), "%s://%s/%s", op->scheme, op->bucket, key);
	if (n < 0 || (size_t)n > WIRE_MAX_URI)
		return; /* cannot travel in an ENTRY frame */
	if (backend_list_add(&op->page, uri, size, mtime, is_prefix) < 0)
		op->xml_bad = 1;
}

static void XMLCALL s3_xml_end(void *arg, const XML_Char *name)
{
	struct backend_op *op = arg;
	const char *t = op->xtext ? op->xtext : "";
	if (!op->xtext_len)
		t = "";
	const char *path = op->xpath;
	if (strcmp(path, "/ListBucketResult/Contents/Key") == 0)
		snprintf(op->ent_key, sizeof(op->ent_key), "%s", t);
	else if (strcmp(path, "/ListBucketResult/Contents/Size") == 0)
		op->ent_size = strtoull(t, NULL, 10);
	else if (strcmp(path, "/ListBucketResult/Contents/LastModified") == 0)
		op->ent_mtime = s3_parse_iso_date(t);
	else if (strcmp(path, "/ListBucketResult/Contents") == 0) {
		s3_list_add(op, op->ent_key, op->ent_size, op->ent_mtime, 0);
		op->ent_key[0] = '\0';
		op->ent_size = 0;
		op->ent_mtime = 0;
	} else if (strcmp(path, "/ListBucketResult/CommonPrefixes/Prefix") == 0)
		s3_list_add(op, t, 0, 0, 1);
	else if (strcmp(path, "/ListBucketResult/NextContinuationToken") == 0) {
		free(op->token);
		op->token = strdup(t);
	} else if (strcmp(path, "/ListBucketResult/IsTruncated") == 0)
		op->truncated = strcmp(t, "true") == 0;
	/* Azure: EnumerationResults */
	else if (strcmp(path, "/EnumerationResults/Blobs/Blob/Name") == 0)
		snprintf(op->ent_key, sizeof(op->ent_key), "%s", t);
	else if (strcmp(path, "/EnumerationResults/Blobs/Blob/Properties/Content-Length") == 0)
		op->ent_size = strtoull(t, NULL, 10);
	else if (strcmp(path, "/EnumerationResults/Blobs/Blob/Properties/Last-Modified") == 0)
		op->ent_mtime = s3_parse_http_date(t);
	else if (strcmp(path, "/EnumerationResults/Blobs/Blob") == 0) {
		s3_list_add(op, op->ent_key, op->ent_size, op->ent_mtime, 0);
		op->ent_key[0] = '\0';
		op->ent_size = 0;
		op->ent_mtime = 0;
	} else if (strcmp(path, "/EnumerationResults/Blobs/BlobPrefix/Name") == 0)
		s3_list_add(op, t, 0, 0, 1);
	else if (strcmp(path, "/EnumerationResults/NextMarker") == 0) {
		free(op->token);
		op->token = *t ? strdup(t) : NULL;
		op->truncated = *t != 0;
	}
	size_t n = strlen(name);
	if (op->xpath_len >= n + 1)
		op->xpath_len -= n + 1;
	op->xpath[op->xpath_len] = '\0';
	op->xtext_len = 0;
}

static int s3_setup_list(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	/* parameters in byte order, as SigV4 wants them, and encoded */
	char q[WIRE_MAX_URI * 3 + 4096], tok[3 * 1024 + 1], pre[WIRE_MAX_URI * 3 + 1];
	size_t ql = 0;
	q[0] = '\0';
	int page = op->page_limit                  ? op->page_limit
	           : op->ctx->cloud->list_page > 0 ? op->ctx->cloud->list_page
	                                           : S3_LIST_PAGE;
	if (op->gs) {
		if (http_encode(op->key, strlen(op->key), 0, pre, sizeof(pre)) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: prefix too long", op->uri);
		ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "maxResults=%d", page);
		if (!op->recursive)
			ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&delimiter=%%2F");
		if (op->token) {
			if (http_encode(op->token, strlen(op->token), 0, tok, sizeof(tok)) < 0)
				return err_set(e, WIRE_E_BACKEND,
				               "%s: gs LIST: page token too long", op->uri);
			ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&pageToken=%s", tok);
		}
		if (pre[0])
			snprintf(q + ql, sizeof(q) - ql, "&prefix=%s", pre);
		int rc = s3_build_url(op, "", q, e);
		if (rc < 0)
			return rc;
		op->xtext_len = 0;
		op->xml_bad = 0;
		op->truncated = 0;
		backend_list_free(&op->page);
		return s3_setup_common(op, c, easy, e);
	}
	if (op->az) {
		if (http_encode(op->key, strlen(op->key), 0, pre, sizeof(pre)) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: prefix too long", op->uri);
		ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "comp=list");
		if (!op->recursive)
			ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&delimiter=%%2F");
		if (op->token) {
			if (http_encode(op->token, strlen(op->token), 0, tok, sizeof(tok)) < 0)
				return err_set(e, WIRE_E_BACKEND, "%s: az LIST: marker too long",
				               op->uri);
			ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&marker=%s", tok);
		}
		ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&maxresults=%d", page);
		if (pre[0])
			ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "&prefix=%s", pre);
		snprintf(q + ql, sizeof(q) - ql, "&restype=container");
		goto url;
	}
	if (op->token) {
		if (http_encode(op->token, strlen(op->token), 0, tok, sizeof(tok)) < 0)
			return err_set(e, WIRE_E_BACKEND,
			               "%s: %s LIST: continuation token too long", op->uri,
			               op->prov);
		ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "continuation-token=%s&", tok);
	}
	if (!op->recursive)
		ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "delimiter=%%2F&");
	ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "list-type=2&");
	ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "max-keys=%d&", page);
	if (http_encode(op->key, strlen(op->key), 0, pre, sizeof(pre)) < 0)
		return err_set(e, WIRE_E_INVALID, "%s: prefix too long", op->uri);
	if (pre[0])
		snprintf(q + ql, sizeof(q) - ql, "prefix=%s", pre);
	else
		q[ql - 1] =
		    '\0'; /* libcurl's SigV4 mangles an empty trailing value: leave it out */
url:;
	int rc = s3_build_url(op, "", q, e);
	if (rc < 0)
		return rc;
	/* a fresh parser per attempt */
	if (op->xp)
		XML_ParserFree(op->xp);
	op->xp = XML_ParserCreate(NULL);
	if (!op->xp)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	XML_SetUserData(op->xp, op);
	XML_SetElementHandler(op->xp, s3_xml_start, s3_xml_end);
	XML_SetCharacterDataHandler(op->xp, s3_xml_text);
	op->xpath_len = 0;
	op->xpath[0] = '\0';
	op->xml_bad = 0;
	op->truncated = 0;
	backend_list_free(&op->page);
	op->m_method = "GET";
	return s3_setup_common(op, c, easy, e);
}

/* A GCS listing page (JSON, read whole: at most list_page entries) into op->page. */
static int gs_list_parse(struct backend_op *op)
{
	json_t *root = json_loads(op->xtext ? op->xtext : "", 0, NULL);
	if (!root)
		return -1;
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(root, "items"), i, v)
	{
		const char *name = json_string_value(json_object_get(v, "name"));
		const char *size = json_string_value(json_object_get(v, "size"));
		const char *upd = json_string_value(json_object_get(v, "updated"));
		if (name)
			s3_list_add(op, name, size ? strtoull(size, NULL, 10) : 0,
			            upd ? s3_parse_iso_date(upd) : 0, 0);
	}
	json_array_foreach(json_object_get(root, "prefixes"), i, v)
	{
		if (json_string_value(v))
			s3_list_add(op, json_string_value(v), 0, 0, 1);
	}
	const char *next = json_string_value(json_object_get(root, "nextPageToken"));
	free(op->token);
	op->token = next && *next ? strdup(next) : NULL;
	op->truncated = op->token != NULL;
	json_decref(root);
	return 0;
}

static size_t s3_list_body(struct http_call *c, const char *p, size_t n)
{
	struct backend_op *op = c->arg;
	if (op->gs)
		return s3_collect_body(c, p, n);
	if (XML_Parse(op->xp, p, (int)n, 0) != XML_STATUS_OK)
		op->xml_bad = 1;
	return n;
}

static void s3_list_next(struct backend_op *op);

/* The page an answer brought, parsed and sorted into op->page; or the error (what names
 * the operation in it). */
static int s3_list_page(struct backend_op *op, struct http_call *c, int rc, const struct err *ce,
                        const char *what, struct err *e)
{
	if (rc < 0 || c->status < 200 || c->status >= 300)
		return s3_call_error(op, c, rc, ce, what, e);
	if (op->gs) {
		if (gs_list_parse(op) < 0 || op->xml_bad)
			return err_set(e, WIRE_E_BACKEND, "%s: gs %s: unreadable answer", op->uri,
			               what);
	} else if (XML_Parse(op->xp, "", 0, 1) != XML_STATUS_OK || op->xml_bad) {
		return err_set(e, WIRE_E_BACKEND, "%s: %s %s: unreadable answer (%s)", op->uri,
		               op->prov, what, XML_ErrorString(XML_GetErrorCode(op->xp)));
	}
	/* S3 pages are in key order; within a page, keys and prefixes come apart: sort */
	backend_list_sort(&op->page);
	return 0;
}

static void s3_list_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if ((rc = s3_list_page(op, c, rc, ce, "LIST", &e)) < 0) {
		s3_finish(op, rc, &e);
		return;
	}
	for (size_t i = 0; i < op->page.n; i++) {
		const struct backend_entry *en = &op->page.v[i];
		op->sink.entry(op->sink.arg, en->uri, en->size, en->mtime_ns, en->is_prefix);
	}
	backend_list_free(&op->page);
	if (!op->truncated || !op->token) {
		s3_finish(op, 0, NULL);
		return;
	}
	op->between_pages = 1;
	if (!op->paused)
		s3_list_next(op);
}

static void s3_list_next(struct backend_op *op)
{
	struct err e;
	op->between_pages = 0;
	op->call.attempt = 0;
	if (s3_http_start(op, &op->call, &e) < 0)
		s3_finish(op, -(int)e.code, &e);
}

static int s3_list(struct backend_ctx *ctx, const struct uri *u, uint32_t flags,
                   const struct backend_sink *s, struct backend_op **out, struct err *e)
{
	struct backend_op *op = s3_op_new(ctx, u, S3_LIST, s, e);
	if (!op)
		return -e->code;
	op->recursive = flags & 1;
	op->call.setup = s3_setup_list;
	op->call.on_body = s3_list_body;
	op->call.on_done = s3_list_done;
	int rc = s3_http_start(op, &op->call, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

/* ---- DELETE ---- */

static int s3_setup_delete(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_build_url(op, op->key, NULL, e);
	if (rc < 0)
		return rc;
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE");
	op->m_method = "DELETE";
	return s3_setup_common(op, c, easy, e);
}

static void s3_delete_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "DELETE", &e);
		s3_finish(op, rc, &e);
		return;
	}
	s3_finish(op, 0, NULL);
}

static void s3_delete_after_head(struct backend_op *op, int rc, const struct err *ce)
{
	struct err e;
	struct http_call *c = &op->call;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "HEAD", &e);
		s3_finish(op, rc, &e);
		return;
	}
	http_cancel(&op->call);
	memset(&op->call, 0, sizeof(op->call));
	op->call.arg = op;
	op->call.setup = s3_setup_delete;
	op->call.on_done = s3_delete_done;
	if (s3_http_start(op, &op->call, &e) < 0)
		s3_finish(op, -(int)e.code, &e);
}

static int s3_remove(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
                     struct backend_op **out, struct err *e)
{
	struct backend_op *op = s3_op_new(ctx, u, S3_DELETE, s, e);
	if (!op)
		return -e->code;
	if (!op->key[0] || op->key[strlen(op->key) - 1] == '/') {
		free(op);
		return err_set(e, WIRE_E_INVALID, "%s: is a directory", u->text);
	}
	int rc = s3_start_head(op, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

/* ---- PUT ---- */

/* Aborting a multipart upload outlives the operation it ends: it frees itself. */
struct s3_abort {
	struct backend_op op; /* a copy of what the URL needs */
};

static void s3_abort_done(struct http_call *c, int rc, const struct err *ce)
{
	(void)rc;
	(void)ce;
	struct backend_op *op = c->arg;
	http_cancel(c);
	free(op);
}

static int s3_setup_abort(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	char q[4096], id[3 * 1024];
	if (http_encode(op->upload_id, strlen(op->upload_id), 0, id, sizeof(id)) < 0)
		return err_set(e, WIRE_E_INTERNAL, "upload id too long");
	snprintf(q, sizeof(q), "uploadId=%s", id);
	int rc = s3_build_url(op, op->key, q, e);
	if (rc < 0)
		return rc;
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE");
	return s3_setup_common(op, c, easy, e);
}

/* Fire and forget (some stores, s3rver among them, do not know the call). */
static void s3_abort_upload(struct backend_op *src)
{
	if (!src->upload_id[0] || src->az)
		return; /* Azure drops uncommitted blocks by itself */
	struct backend_op *op = calloc(1, sizeof(*op));
	if (!op)
		return;
	op->ctx = src->ctx;
	op->cfg = src->cfg;
	memcpy(op->uri, src->uri, sizeof(op->uri));
	memcpy(op->bucket, src->bucket, sizeof(op->bucket));
	memcpy(op->key, src->key, sizeof(op->key));
	memcpy(op->upload_id, src->upload_id, sizeof(op->upload_id));
	op->call.arg = op;
	op->call.setup = s3_setup_abort;
	op->call.on_done = s3_abort_done;
	struct err e;
	if (s3_http_start(op, &op->call, &e) < 0) {
		http_cancel(&op->call);
		free(op);
	}
}

static size_t s3_read_mem(char *dst, size_t size, size_t nmemb, const uint8_t *src, size_t len,
                          size_t *pos)
{
	size_t room = size * nmemb, left = len - *pos;
	size_t n = left < room ? left : room;
	memcpy(dst, src + *pos, n);
	*pos += n;
	return n;
}

static size_t s3_single_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct backend_op *op = arg;
	return s3_read_mem(dst, size, nmemb, op->single, (size_t)op->size, &op->single_sent);
}

/* GCS uploads go to /upload/storage/v1/b/BUCKET/o?uploadType=TYPE&name=NAME */
static int gs_upload_url(struct backend_op *op, const char *type, struct err *e)
{
	char ename[WIRE_MAX_URI * 3 + 1];
	if (http_encode(op->key, strlen(op->key), 0, ename, sizeof(ename)) < 0)
		return err_set(e, WIRE_E_INVALID, "%s: name too long", op->uri);
	int n =
	    snprintf(op->url, sizeof(op->url), "%s/upload/storage/v1/b/%s/o?uploadType=%s&name=%s",
	             op->ctx->cloud->gs.base, op->bucket, type, ename);
	if (n < 0 || (size_t)n >= sizeof(op->url))
		return err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
	return 0;
}

static int s3_setup_put_single(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = op->gs ? gs_upload_url(op, "media", e) : s3_build_url(op, op->key, NULL, e);
	if (rc < 0)
		return rc;
	op->single_sent = 0;
	if (op->gs) {
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_single_read);
		curl_easy_setopt(easy, CURLOPT_READDATA, op);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)op->size);
		if (http_header(c, "Content-Type: application/octet-stream") < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		return s3_setup_common(op, c, easy, e);
	}
	curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_single_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, op);
	curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)op->size);
	if (http_header(c, "Content-Type: application/octet-stream") < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	op->m_method = "PUT";
	op->m_len = op->size;
	op->m_ctype = "application/octet-stream";
	op->ms_blob_type = 1;
	return s3_setup_common(op, c, easy, e);
}

/* A PUT failed: abort what it left, report. */
static void s3_put_fail(struct backend_op *op, int rc, const struct err *e)
{
	s3_abort_upload(op);
	s3_finish(op, rc, e);
}

static void s3_put_verify(struct backend_op *op)
{
	struct err e;
	op->pstate = S3_PUT_VERIFYING;
	if (s3_start_head(op, &e) < 0)
		s3_put_fail(op, -(int)e.code, &e);
}

static void s3_put_verified(struct backend_op *op, int rc, const struct err *ce)
{
	struct err e;
	struct http_call *c = &op->call;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "HEAD after PUT", &e);
		s3_finish(op, rc, &e);
		return;
	}
	struct backend_info info;
	if ((rc = s3_info_of(op, c, &info, &e)) < 0) {
		s3_finish(op, rc, &e);
		return;
	}
	if (info.size != op->size) {
		err_set(&e, WIRE_E_BACKEND,
		        "%s: %s stored %" PRIu64 " bytes of an upload of %" PRIu64, op->uri,
		        op->prov, info.size, op->size);
		s3_finish(op, -WIRE_E_BACKEND, &e);
		return;
	}
	s3_finish(op, 0, NULL);
}

static void s3_single_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "PUT", &e);
		s3_finish(op, rc, &e);
		return;
	}
	free(op->single);
	op->single = NULL;
	s3_put_verify(op);
}

/* -- multipart -- */

static void s3_parts_pump(struct backend_op *op);

static int s3_setup_create(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc =
	    op->gs ? gs_upload_url(op, "resumable", e) : s3_build_url(op, op->key, "uploads=", e);
	if (rc < 0)
		return rc;
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, 0L);
	curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, "");
	if (http_header(c, "Content-Type: application/octet-stream") < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	if (op->gs && (http_header(c, "X-Upload-Content-Type: application/octet-stream") < 0 ||
	               http_header(c, "X-Upload-Content-Length: %" PRIu64, op->size) < 0))
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return s3_setup_common(op, c, easy, e);
}

static size_t s3_collect_body(struct http_call *c, const char *p, size_t n)
{
	struct backend_op *op = c->arg;
	if (op->xtext_len + n + 1 > op->xtext_cap) {
		size_t cap = op->xtext_cap ? op->xtext_cap : 1024;
		while (cap < op->xtext_len + n + 1)
			cap *= 2;
		if (cap > (1 << 20))
			return 0;
		char *v = realloc(op->xtext, cap);
		if (!v)
			return 0;
		op->xtext = v;
		op->xtext_cap = cap;
	}
	memcpy(op->xtext + op->xtext_len, p, n);
	op->xtext_len += n;
	op->xtext[op->xtext_len] = '\0';
	return n;
}

/* -- GCS: one PUT to the session URI, fed part by part as the client's bytes arrive -- */

static size_t gs_stream_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct backend_op *op = arg;
	size_t room = size * nmemb, got = 0;
	while (got < room && op->rd_part < op->nparts) {
		struct s3_part *p = &op->parts[op->rd_part];
		if (op->rd_part >= op->filled) {
			if (got)
				break;
			op->stream_paused = 1; /* s3_parts_pump resumes it when the part is full */
			return CURL_READFUNC_PAUSE;
		}
		size_t n = p->len - p->sent < room - got ? p->len - p->sent : room - got;
		memcpy(dst + got, p->buf + p->sent, n);
		p->sent += n;
		got += n;
		if (p->sent == p->len) {
			free(p->buf);
			p->buf = NULL;
			p->state = 2;
			op->rd_part++;
			if (op->full_signalled && op->sink.wake) {
				op->full_signalled = 0;
				op->sink.wake(op->sink.arg); /* deferred by the connection */
			}
		}
	}
	return got;
}

static int gs_setup_stream(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int n = snprintf(op->url, sizeof(op->url), "%s", op->upload_id);
	if (n < 0 || (size_t)n >= sizeof(op->url))
		return err_set(e, WIRE_E_BACKEND, "%s: session URI too long", op->uri);
	c->streaming = 1; /* paused while the client is slow: no whole-request timeout */
	curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, gs_stream_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, op);
	curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)op->size);
	return s3_setup_common(op, c, easy, e);
}

static void s3_put_verify(struct backend_op *op);

static void gs_stream_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "resumable upload", &e);
		s3_finish(op, rc, &e);
		return;
	}
	s3_put_verify(op);
}

static void gs_stream_start(struct backend_op *op)
{
	struct err e;
	http_cancel(&op->call);
	memset(&op->call, 0, sizeof(op->call));
	op->call.arg = op;
	op->call.no_retry = 1; /* the bytes sent are gone: a retry cannot replay them */
	op->call.setup = gs_setup_stream;
	op->call.on_body = s3_collect_body;
	op->call.on_done = gs_stream_done;
	if (s3_http_start(op, &op->call, &e) < 0)
		s3_finish(op, -(int)e.code, &e);
}

static void s3_create_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	op->creating = 0;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "CreateMultipartUpload", &e);
		s3_finish(op, rc, &e);
		return;
	}
	if (op->gs) {
		/* the session URI; the bytes go there in one streamed PUT */
		if (http_resp_header(c, "Location", op->upload_id, sizeof(op->upload_id)) < 0)
			op->upload_id[0] = '\0';
		op->xtext_len = 0;
		if (!op->upload_id[0]) {
			err_set(&e, WIRE_E_BACKEND, "%s: gs resumable upload: no session URI",
			        op->uri);
			s3_finish(op, -WIRE_E_BACKEND, &e);
			return;
		}
		gs_stream_start(op);
		return;
	}
	s3_xml_field(op->xtext, "UploadId", op->upload_id, sizeof(op->upload_id));
	op->xtext_len = 0;
	if (!op->upload_id[0]) {
		err_set(&e, WIRE_E_BACKEND, "%s: %s CreateMultipartUpload: no UploadId", op->uri,
		        op->prov);
		s3_finish(op, -WIRE_E_BACKEND, &e);
		return;
	}
	s3_parts_pump(op);
}

static size_t s3_part_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct s3_part *p = arg;
	return s3_read_mem(dst, size, nmemb, p->buf, p->len, &p->sent);
}

static int s3_setup_part(struct http_call *c, CURL *easy, struct err *e)
{
	struct s3_part *p = c->arg;
	struct backend_op *op = p->op;
	char q[4096], id[3 * 1024];
	if (op->az) {
		/* Put Block: ids of one length, base64 */
		char raw[32], b64[64];
		snprintf(raw, sizeof(raw), "s3dlio-blk-%07d", p->num);
		EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)raw, (int)strlen(raw));
		snprintf(p->etag, sizeof(p->etag), "%s", b64);
		http_encode(b64, strlen(b64), 0, id, sizeof(id));
		snprintf(q, sizeof(q), "blockid=%s&comp=block", id);
	} else {
		if (http_encode(op->upload_id, strlen(op->upload_id), 0, id, sizeof(id)) < 0)
			return err_set(e, WIRE_E_BACKEND, "%s: upload id too long", op->uri);
		snprintf(q, sizeof(q), "partNumber=%d&uploadId=%s", p->num, id);
	}
	int rc = s3_build_url(op, op->key, q, e);
	if (rc < 0)
		return rc;
	p->sent = 0;
	curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_part_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, p);
	curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)p->len);
	op->m_method = "PUT";
	op->m_len = p->len;
	return s3_setup_common(op, c, easy, e);
}

static void s3_put_complete(struct backend_op *op);

static void s3_part_done(struct http_call *c, int rc, const struct err *ce)
{
	struct s3_part *p = c->arg;
	struct backend_op *op = p->op;
	struct err e;
	op->in_flight--;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		char what[64];
		snprintf(what, sizeof(what), "UploadPart %d", p->num);
		rc = s3_call_error(op, c, rc, ce, what, &e);
		s3_put_fail(op, rc, &e);
		return;
	}
	char etag[130];
	if (op->az)
		snprintf(etag, sizeof(etag), "%s", p->etag); /* the block id */
	else if (http_resp_header(c, "ETag", etag, sizeof(etag)) < 0) {
		err_set(&e, WIRE_E_BACKEND, "%s: %s UploadPart %d: no ETag", op->uri, op->prov,
		        p->num);
		s3_put_fail(op, -WIRE_E_BACKEND, &e);
		return;
	}
	memcpy(p->etag, etag, sizeof(etag));
	p->state = 2;
	free(p->buf);
	p->buf = NULL;
	http_cancel(c); /* frees the easy handle; the connection stays cached */
	s3_parts_pump(op);
}

/* Start the parts that are filled, up to parts_in_flight; complete when all are done. */
static void s3_parts_pump(struct backend_op *op)
{
	struct err e;
	if (!op->upload_id[0])
		return;
	if (op->gs) {
		if (op->stream_paused && op->rd_part < op->filled) {
			op->stream_paused = 0;
			curl_easy_pause(op->call.easy, CURLPAUSE_CONT);
		}
		return;
	}
	int done = 0;
	for (int i = 0; i < op->nparts; i++) {
		struct s3_part *p = &op->parts[i];
		if (p->state == 2) {
			done++;
			continue;
		}
		if (p->state != 0 || i >= op->filled)
			continue;
		if (op->in_flight >= op->ctx->cloud->parts_in_flight)
			break;
		memset(&p->call, 0, sizeof(p->call));
		p->call.arg = p;
		p->call.setup = s3_setup_part;
		p->call.on_done = s3_part_done;
		if (s3_http_start(op, &p->call, &e) < 0) {
			s3_put_fail(op, -(int)e.code, &e);
			return;
		}
		p->state = 1;
		op->in_flight++;
	}
	if (op->full_signalled && op->filled - done < op->ctx->cloud->parts_in_flight + 1) {
		op->full_signalled = 0;
		if (op->sink.wake)
			op->sink.wake(op->sink.arg); /* may feed more parts, never frees op */
	}
	if (op->pstate == S3_PUT_FINISHING && done == op->nparts)
		s3_put_complete(op);
}

static size_t s3_complete_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct backend_op *op = arg;
	return s3_read_mem(dst, size, nmemb, (const uint8_t *)op->complete_xml, op->complete_len,
	                   &op->complete_sent);
}

static int s3_setup_complete(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	char q[4096], id[3 * 1024];
	if (op->az) {
		/* Put Block List */
		int rc = s3_build_url(op, op->key, "comp=blocklist", e);
		if (rc < 0)
			return rc;
		op->complete_sent = 0;
		op->xtext_len = 0;
		curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_complete_read);
		curl_easy_setopt(easy, CURLOPT_READDATA, op);
		curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)op->complete_len);
		if (http_header(c, "Content-Type: application/xml") < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		op->m_method = "PUT";
		op->m_len = op->complete_len;
		op->m_ctype = "application/xml";
		return s3_setup_common(op, c, easy, e);
	}
	if (http_encode(op->upload_id, strlen(op->upload_id), 0, id, sizeof(id)) < 0)
		return err_set(e, WIRE_E_BACKEND, "%s: upload id too long", op->uri);
	snprintf(q, sizeof(q), "uploadId=%s", id);
	int rc = s3_build_url(op, op->key, q, e);
	if (rc < 0)
		return rc;
	op->complete_sent = 0;
	op->xtext_len = 0;
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_complete_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, op);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)op->complete_len);
	if (http_header(c, "Content-Type: application/xml") < 0)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	return s3_setup_common(op, c, easy, e);
}

static void s3_complete_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, "CompleteMultipartUpload", &e);
		s3_put_fail(op, rc, &e);
		return;
	}
	/* S3 may answer 200 with an <Error> body */
	if (op->xtext && strstr(op->xtext, "<Error>")) {
		char code[128], msg[512];
		s3_xml_field(op->xtext, "Code", code, sizeof(code));
		s3_xml_field(op->xtext, "Message", msg, sizeof(msg));
		err_set(&e, WIRE_E_BACKEND, "%s: %s CompleteMultipartUpload: %s: %s", op->uri,
		        op->prov, code, msg);
		s3_put_fail(op, -WIRE_E_BACKEND, &e);
		return;
	}
	op->upload_id[0] = '\0'; /* committed: nothing to abort any more */
	s3_put_verify(op);
}

static void s3_put_complete(struct backend_op *op)
{
	struct err e;
	op->pstate = S3_PUT_COMPLETING;
	size_t cap = 64 + (size_t)op->nparts * 220;
	op->complete_xml = malloc(cap);
	if (!op->complete_xml) {
		err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", op->uri);
		s3_put_fail(op, -WIRE_E_INTERNAL, &e);
		return;
	}
	size_t n;
	if (op->az) {
		n = (size_t)snprintf(op->complete_xml, cap,
		                     "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
		for (int i = 0; i < op->nparts; i++)
			n += (size_t)snprintf(op->complete_xml + n, cap - n, "<Latest>%s</Latest>",
			                      op->parts[i].etag);
		n += (size_t)snprintf(op->complete_xml + n, cap - n, "</BlockList>");
	} else {
		n = (size_t)snprintf(op->complete_xml, cap, "<CompleteMultipartUpload>");
		for (int i = 0; i < op->nparts; i++)
			n += (size_t)snprintf(
			    op->complete_xml + n, cap - n,
			    "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>",
			    op->parts[i].num, op->parts[i].etag);
		n += (size_t)snprintf(op->complete_xml + n, cap - n, "</CompleteMultipartUpload>");
	}
	op->complete_len = n;
	http_cancel(&op->call);
	memset(&op->call, 0, sizeof(op->call));
	op->call.arg = op;
	op->call.setup = s3_setup_complete;
	op->call.on_body = s3_collect_body;
	op->call.on_done = s3_complete_done;
	if (s3_http_start(op, &op->call, &e) < 0)
		s3_put_fail(op, -(int)e.code, &e);
}

static int s3_put_open(struct backend_ctx *ctx, const struct uri *u, uint64_t size,
                       const struct backend_sink *s, struct backend_op **out, struct err *e)
{
	int result = 0;
	struct backend_op *op = s3_op_new(ctx, u, S3_PUT, s, e);
	if (!op)
		return -e->code;
	if (!op->key[0] || op->key[strlen(op->key) - 1] == '/') {
		free(op);
		return err_set(e, WIRE_E_INVALID, "%s: is a directory", u->text);
	}
	op->size = size;
	const struct cloud *cl = ctx->cloud;
	if (size <= cl->multipart_threshold) {
		op->single = malloc(size ? (size_t)size : 1);
		if (!op->single) {
			result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
			goto done;
		}
		*out = op;
		return 0;
	}
	op->multipart = 1;
	op->part_size = cl->part_size;
	if ((size + op->part_size - 1) / op->part_size > S3_MAX_PARTS)
		op->part_size = ((size / S3_MAX_PARTS) | ((1u << 20) - 1)) + 1; /* MiB multiple */
	op->nparts = (int)((size + op->part_size - 1) / op->part_size);
	op->parts = calloc((size_t)op->nparts, sizeof(*op->parts));
	if (!op->parts) {
		result = err_set(e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
		goto done;
	}
	for (int i = 0; i < op->nparts; i++) {
		op->parts[i].op = op;
		op->parts[i].num = i + 1;
	}
	if (op->az) {
		/* blocks need no upload to be created first */
		snprintf(op->upload_id, sizeof(op->upload_id), "blocks");
		*out = op;
		return 0;
	}
	op->call.setup = s3_setup_create;
	op->call.on_body = s3_collect_body;
	op->call.on_done = s3_create_done;
	op->creating = 1;
	result = s3_http_start(op, &op->call, e);
	if (result < 0)
		goto done;
	*out = op;
	return 0;
done:
	s3_op_free(op);
	return result;
}

static int s3_put_write(struct backend_op *op, const struct iovec *iov, int iovcnt, struct err *e)
{
	for (int i = 0; i < iovcnt; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t n = iov[i].iov_len;
		if (n > op->size - op->received)
			return err_set(e, WIRE_E_INVALID, "%s: more bytes than announced", op->uri);
		if (!op->multipart) {
			memcpy(op->single + op->received, p, n);
			op->received += n;
			continue;
		}
		while (n) {
			int idx = (int)(op->received / op->part_size);
			struct s3_part *pt = &op->parts[idx];
			uint64_t start = (uint64_t)idx * op->part_size;
			uint64_t plen =
			    op->size - start < op->part_size ? op->size - start : op->part_size;
			if (!pt->buf && !(pt->buf = malloc((size_t)plen)))
				return err_set(e, WIRE_E_INTERNAL, "%s: out of memory", op->uri);
			size_t at = (size_t)(op->received - start);
			size_t take = plen - at < n ? (size_t)(plen - at) : n;
			memcpy(pt->buf + at, p, take);
			pt->len = at + take;
			op->received += take;
			p += take;
			n -= take;
			if (pt->len == plen)
				op->filled = idx + 1;
		}
	}
	if (op->multipart)
		s3_parts_pump(op);
	return 0;
}

/* Parts held in memory (filled, not yet uploaded) beyond what may fly: stop the input. */
static int s3_put_full(struct backend_op *op)
{
	if (!op->multipart)
		return 0;
	int done = 0;
	for (int i = 0; i < op->filled; i++)
		done += op->parts[i].state == 2;
	if (op->filled - done >= op->ctx->cloud->parts_in_flight + 1) {
		op->full_signalled = 1;
		return 1;
	}
	return 0;
}

static int s3_put_finish(struct backend_op *op, struct err *e)
{
	if (op->received != op->size)
		return err_set(e, WIRE_E_CHECKSUM, "%s: upload incomplete", op->uri);
	if (!op->multipart) {
		op->call.setup = s3_setup_put_single;
		op->call.on_done = s3_single_done;
		return s3_http_start(op, &op->call, e);
	}
	op->pstate = S3_PUT_FINISHING;
	op->filled = op->nparts;
	s3_parts_pump(op);
	return 0;
}

/* ---- MKDIR, RMDIR: buckets and containers ----
 *
 * Object stores have no directories: a MKDIR below the bucket succeeds at once, and an RMDIR
 * below it succeeds when nothing is stored under the prefix. At the bucket level MKDIR creates
 * the bucket (S3 CreateBucket, with the LocationConstraint a region other than us-east-1
 * needs; Azure Create Container; GCS buckets.insert into the configured project) and RMDIR
 * deletes it once a one-entry LIST found it empty (Azure would delete a full container). A
 * bucket that already exists is success when it is ours: Azure says so in its code, S3 and
 * GCS answer 409 either way, so a HEAD (GCS: a metadata GET) of the bucket decides. */

static int s3_is_bucket_level(const struct backend_op *op)
{
	return op->key[0] == '\0';
}

/* The URL of the bucket itself (gs_insert: GCS's buckets.insert, which names no bucket). */
static int s3_bucket_url(struct backend_op *op, int gs_insert, struct err *e)
{
	int n;
	if (!op->gs)
		return s3_build_url(op, "", op->az ? "restype=container" : NULL, e);
	if (gs_insert) {
		char eproj[3 * 256 + 1];
		const char *proj = op->ctx->cloud->gs.project;
		if (http_encode(proj, strlen(proj), 0, eproj, sizeof(eproj)) < 0)
			return err_set(e, WIRE_E_INVALID, "%s: the project name is too long",
			               op->uri);
		n = snprintf(op->url, sizeof(op->url), "%s/storage/v1/b?project=%s",
		             op->ctx->cloud->gs.base, eproj);
	} else {
		n = snprintf(op->url, sizeof(op->url), "%s/storage/v1/b/%s",
		             op->ctx->cloud->gs.base, op->bucket);
	}
	if (n < 0 || (size_t)n >= sizeof(op->url))
		return err_set(e, WIRE_E_INVALID, "%s: URL too long", op->uri);
	return 0;
}

/* Start the next step of op on op->call (the previous one is over). */
static int s3_bucket_step(struct backend_op *op,
                          int (*setup)(struct http_call *, CURL *, struct err *),
                          void (*on_done)(struct http_call *, int, const struct err *),
                          struct err *e)
{
	http_cancel(&op->call);
	memset(&op->call, 0, sizeof(op->call));
	op->call.arg = op;
	op->call.setup = setup;
	op->call.on_body = s3_collect_body;
	op->call.on_done = on_done;
	op->xtext_len = 0;
	return s3_http_start(op, &op->call, e);
}

static int s3_setup_mkbucket(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_bucket_url(op, 1, e);
	if (rc < 0)
		return rc;
	if (op->gs) {
		/* the name goes in a JSON body; json_dumps escapes it */
		json_t *body = json_pack("{s:s}", "name", op->bucket);
		char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
		json_decref(body);
		if (!text)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
		curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, text);
		free(text);
		if (http_header(c, "Content-Type: application/json") < 0)
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		return s3_setup_common(op, c, easy, e);
	}
	/* S3: us-east-1 takes no configuration (it refuses its own name there) */
	free(op->complete_xml);
	op->complete_xml = NULL;
	op->complete_len = op->complete_sent = 0;
	if (!op->az && strcmp(op->cfg->region, "us-east-1") != 0) {
		if (asprintf(&op->complete_xml,
		             "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/"
		             "2006-03-01/\"><LocationConstraint>%s</LocationConstraint>"
		             "</CreateBucketConfiguration>",
		             op->cfg->region) < 0) {
			op->complete_xml = NULL;
			return err_set(e, WIRE_E_INTERNAL, "out of memory");
		}
		op->complete_len = strlen(op->complete_xml);
	}
	curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(easy, CURLOPT_READFUNCTION, s3_complete_read);
	curl_easy_setopt(easy, CURLOPT_READDATA, op);
	curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)op->complete_len);
	op->m_method = "PUT";
	op->m_len = op->complete_len;
	return s3_setup_common(op, c, easy, e);
}

static int s3_setup_bucket_probe(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_bucket_url(op, 0, e);
	if (rc < 0)
		return rc;
	if (!op->gs)
		curl_easy_setopt(easy, CURLOPT_NOBODY, 1L); /* HEAD: GCS answers a GET */
	op->m_method = "HEAD";
	return s3_setup_common(op, c, easy, e);
}

static void s3_bucket_probe_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	(void)ce;
	if (rc == 0 && c->status >= 200 && c->status < 300) {
		s3_finish(op, 0, NULL); /* it exists and answers us: ours */
		return;
	}
	s3_finish(op, -(int)op->conflict.code, &op->conflict);
}

static void s3_mkbucket_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc == 0 && c->status >= 200 && c->status < 300) {
		s3_finish(op, 0, NULL);
		return;
	}
	rc = s3_call_error(op, c, rc, ce, op->az ? "Create Container" : "CreateBucket", &e);
	if (c->status != 409) {
		s3_finish(op, rc, &e);
		return;
	}
	if (op->az) {
		char code[128] = "";
		http_resp_header(c, "x-ms-error-code", code, sizeof(code));
		s3_finish(op, strcmp(code, "ContainerAlreadyExists") == 0 ? 0 : rc, &e);
		return;
	}
	/* S3's BucketAlreadyOwnedByYou is ours; its BucketAlreadyExists and GCS's 409 may be
	 * someone else's: ask the bucket */
	if (strstr(e.msg, "BucketAlreadyOwnedByYou")) {
		s3_finish(op, 0, NULL);
		return;
	}
	op->conflict = e;
	if (s3_bucket_step(op, s3_setup_bucket_probe, s3_bucket_probe_done, &e) < 0)
		s3_finish(op, -(int)e.code, &e);
}

static int s3_mkdir(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
                    struct backend_op **out, struct err *e)
{
	struct backend_op *op = s3_op_new(ctx, u, S3_MKDIR, s, e);
	if (!op)
		return -e->code;
	if (!s3_is_bucket_level(op)) {
		free(op);
		return 1; /* a prefix: nothing to make */
	}
	if (op->gs && (!ctx->cloud->gs.project || !ctx->cloud->gs.project[0])) {
		free(op);
		return err_set(
		    e, WIRE_E_INVALID,
		    "%s: gs: no project to create the bucket in (set GOOGLE_CLOUD_PROJECT "
		    "or use a service-account key with a project_id)",
		    u->text);
	}
	int rc = s3_bucket_step(op, s3_setup_mkbucket, s3_mkbucket_done, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

static int s3_setup_rmbucket(struct http_call *c, CURL *easy, struct err *e)
{
	struct backend_op *op = c->arg;
	int rc = s3_bucket_url(op, 0, e);
	if (rc < 0)
		return rc;
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE");
	op->m_method = "DELETE";
	return s3_setup_common(op, c, easy, e);
}

static void s3_rmbucket_done(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if (rc < 0 || c->status < 200 || c->status >= 300) {
		rc = s3_call_error(op, c, rc, ce, op->az ? "Delete Container" : "DeleteBucket", &e);
		s3_finish(op, rc, &e);
		return;
	}
	s3_finish(op, 0, NULL);
}

/* The one-entry listing of what RMDIR would remove came back. */
static void s3_rmdir_listed(struct http_call *c, int rc, const struct err *ce)
{
	struct backend_op *op = c->arg;
	struct err e;
	if ((rc = s3_list_page(op, c, rc, ce, "LIST before RMDIR", &e)) < 0) {
		s3_finish(op, rc, &e);
		return;
	}
	if (op->page.n > 0) {
		err_set(&e, WIRE_E_INVALID, "%s: not empty (%s is stored under it)", op->uri,
		        op->page.v[0].uri);
		s3_finish(op, -WIRE_E_INVALID, &e);
		return;
	}
	if (!s3_is_bucket_level(op)) {
		s3_finish(op, 0, NULL); /* nothing under the prefix: as good as removed */
		return;
	}
	if (s3_bucket_step(op, s3_setup_rmbucket, s3_rmbucket_done, &e) < 0)
		s3_finish(op, -(int)e.code, &e);
}

static int s3_rmdir(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
                    struct backend_op **out, struct err *e)
{
	/* Never the root of an --allow prefix (as file:// refuses): with --allow s3://bkt/, a
	 * bucket-level RMDIR would delete what the server was told to serve. Only a
	 * scheme-wide --allow (s3://) makes a bucket itself removable. */
	const struct uri_allow *a = uri_policy_match(ctx->policy, u->scheme, u->path);
	size_t plen = u->path_len + (u->path[u->path_len - 1] != '/');
	if (a && plen <= a->prefix_len)
		return err_set(e, WIRE_E_PERMISSION,
		               "%s: is the root of the allowed prefix %s: not removed", u->text,
		               a->text);
	struct backend_op *op = s3_op_new(ctx, u, S3_RMDIR, s, e);
	if (!op)
		return -e->code;
	size_t klen = strlen(op->key);
	if (klen && op->key[klen - 1] != '/') {
		/* "dir" and "dir/" name one directory; "dirx/..." is not under it */
		if (klen + 1 >= sizeof(op->key)) {
			free(op);
			return err_set(e, WIRE_E_TOO_LARGE, "%s: key too long", u->text);
		}
		op->key[klen] = '/';
		op->key[klen + 1] = '\0';
	}
	/* recursive (no delimiter) and one entry: any object beneath makes it non-empty */
	op->recursive = 1;
	op->page_limit = 1;
	op->call.arg = op;
	op->call.setup = s3_setup_list;
	op->call.on_body = s3_list_body;
	op->call.on_done = s3_rmdir_listed;
	int rc = s3_http_start(op, &op->call, e);
	if (rc < 0) {
		s3_op_free(op);
		return rc;
	}
	*out = op;
	return 0;
}

/* ---- life cycle ---- */

static void s3_op_free(struct backend_op *op)
{
	gs_auth_forget(op);
	http_cancel(&op->call);
	for (int i = 0; i < op->nparts; i++) {
		http_cancel(&op->parts[i].call);
		free(op->parts[i].buf);
	}
	free(op->parts);
	free(op->single);
	free(op->complete_xml);
	free(op->token);
	free(op->xtext);
	if (op->xp)
		XML_ParserFree(op->xp);
	backend_list_free(&op->page);
	free(op);
}

static void s3_pause(struct backend_op *op, int pause)
{
	if (op->kind == S3_LIST) {
		op->paused = pause;
		if (!pause && op->between_pages)
			s3_list_next(op);
		return;
	}
	http_pause(&op->call, pause);
}

static void s3_cancel(struct backend_op *op)
{
	if (op->kind == S3_PUT)
		s3_abort_upload(op);
	s3_op_free(op);
}

static const struct backend_async_ops s3_async = {
    .get = s3_get,
    .stat = s3_stat,
    .list = s3_list,
    .remove = s3_remove,
    .mkdir = s3_mkdir,
    .rmdir = s3_rmdir,
    .put_open = s3_put_open,
    .put_write = s3_put_write,
    .put_full = s3_put_full,
    .put_finish = s3_put_finish,
    .pause = s3_pause,
    .cancel = s3_cancel,
};

const struct backend_ops backend_s3_ops = {
    .name = "s3",
    .async = &s3_async,
};

const struct backend_ops backend_az_ops = {
    .name = "az",
    .async = &s3_async,
};

const struct backend_ops backend_gs_ops = {
    .name = "gs",
    .async = &s3_async,
};
