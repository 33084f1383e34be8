"""Object-store emulators for the cloud tests (tests/py/test_cloud_*.py), started on
127.0.0.1 from tests/emulators/node_modules (installed by tests/emulators/install.sh).

Each launcher returns an Emulator (process, port, data directory) or calls pytest.skip with
the reason when the emulator is not installed. Nothing here talks to the network beyond
loopback.
"""
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.normpath(os.path.join(HERE, "..", "emulators"))
NODE_MODULES = os.path.join(EMU_DIR, "node_modules")
START_TIMEOUT = 30

S3RVER_KEY = "S3RVER"
S3RVER_SECRET = "S3RVER"


def node_env(**extra):
    """The environment for an emulator: no sanitizer runtime preloaded into node (the ASan
    pass of tests/run preloads it into the interpreter, whose children inherit it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    env.update(extra)
    return env


def need(package, what):
    """Skip unless node and the npm package are installed."""
    if not shutil.which("node"):
        pytest.skip(f"{what}: node is not installed (run tests/emulators/install.sh)")
    if not os.path.isfile(os.path.join(NODE_MODULES, package, "package.json")):
        pytest.skip(f"{what}: npm package {package} is not installed in {NODE_MODULES} "
                    f"(run tests/emulators/install.sh)")


class Emulator:
    def __init__(self, argv, env, port, directory, ready):
        self.argv, self.env, self.port, self.directory, self.ready = \
            argv, env, port, directory, ready
        self.proc = None
        self.output = []

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(self.argv, cwd=EMU_DIR, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"emulator did not start: {self.argv}\n"
                                   + buf.decode("utf-8", "replace"))
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 65536)
                buf += chunk
                if self.ready.encode() in buf:
                    break
        # keep draining its output so it never blocks on a full pipe
        threading.Thread(target=self._drain, args=(fd,), daemon=True).start()
        return self

    def _drain(self, fd):
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass

    cleanup_dir = None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._cleanup()

    def _cleanup(self):
        if self.cleanup_dir and (not self.proc or self.proc.poll() is not None):
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()


def s3rver(directory, buckets, port=None):
    """@20minutes/s3rver on 127.0.0.1 (SigV4 checked; keys S3RVER/S3RVER)."""
    need("@20minutes/s3rver", "s3rver")
    port = port or s3dtest.free_tcp_port()
    env = node_env(NODE_OPTIONS="--openssl-legacy-provider")  # its list tokens use DES
    argv = ["node", os.path.join(EMU_DIR, "s3rver.js"), str(port), directory] + list(buckets)
    return Emulator(argv, env, port, directory, "s3rver: listening on").start()


def s3_env(endpoint, key=S3RVER_KEY, secret=S3RVER_SECRET, **extra):
    """The environment an s3dliod needs for an S3-compatible endpoint (no other AWS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=endpoint)
    env.update(extra)
    return env


def boto_s3(endpoint):
    """boto3's S3 client for an s3rver endpoint: the independent client the tests compare
    s3dlio with (path-style, no retries, so a failure shows). Skips without boto3."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed "
                                "(deploy/install-deps.sh installs python3-boto3)")
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3RVER_KEY, aws_secret_access_key=S3RVER_SECRET,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


# small sizes so the tests exercise multipart and paging quickly
CLOUD_FLAGS = ["--multipart-threshold", "6m", "--part-size", "5m", "--parts-in-flight", "2",
               "--retries", "3", "--retry-base-ms", "50", "--list-page-size", "5",
               "--connect-timeout", "2", "--op-timeout", "30"]


# ---- Azure (Azurite) ----

AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
          "KBHBeksoGMGw==")


def azurite(directory, port=None):
    """Azurite's blob service on 127.0.0.1 (Shared Key and SAS verified)."""
    need("azurite", "azurite")
    port = port or s3dtest.free_tcp_port()
    argv = [os.path.join(NODE_MODULES, ".bin", "azurite-blob"), "--blobHost", "127.0.0.1",
            "--blobPort", str(port), "--location", directory, "--silent",
            "--disableTelemetry", "--skipApiVersionCheck"]
    e = Emulator(argv, node_env(), port, directory, "successfully listens")
    e.start()
    return e


def az_env(endpoint, key=AZ_KEY, sas=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env.update(AZURE_STORAGE_ACCOUNT=AZ_ACCOUNT, AZURE_STORAGE_ENDPOINT=endpoint)
    if key:
        env["AZURE_STORAGE_KEY"] = key
    if sas:
        env["AZURE_STORAGE_SAS_TOKEN"] = sas
    return env


class AzureClient:
    """A minimal independent Azure Blob client: Shared Key signed by hand (urllib), written
    from the REST documentation, sharing no code with the server."""

    VERSION = "2021-12-02"

    def __init__(self, endpoint, account=AZ_ACCOUNT, key=AZ_KEY):
        self.endpoint, self.account = endpoint.rstrip("/"), account
        self.key = __import__("base64").b64decode(key)

    def request(self, method, path, query=None, body=b"", headers=None):
        import base64
        import email.utils
        import hashlib
        import hmac
        import urllib.error
        import urllib.parse
        import urllib.request
        query = dict(query or {})
        headers = dict(headers or {})
        headers["x-ms-date"] = email.utils.formatdate(usegmt=True)
        headers["x-ms-version"] = self.VERSION
        if method in ("PUT", "POST"):
            headers.setdefault("Content-Type", "application/octet-stream")  # urllib's else
        qpath = urllib.parse.quote(path)
        url = f"{self.endpoint}/{qpath}"
        if query:
            url += "?" + urllib.parse.urlencode(sorted(query.items()))
        urlpath = urllib.parse.urlsplit(url).path
        std = [method, headers.get("Content-Encoding", ""), headers.get("Content-Language", ""),
               str(len(body)) if body else "", headers.get("Content-MD5", ""),
               headers.get("Content-Type", ""), "", "", "", "", "", headers.get("Range", "")]
        canon_h = "".join(f"{k.lower()}:{v}\n" for k, v in
                          sorted(headers.items(), key=lambda kv: kv[0].lower())
                          if k.lower().startswith("x-ms-"))
        canon_r = f"/{self.account}{urlpath}" + "".join(
            f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
        sts = "\n".join(std) + "\n" + canon_h + canon_r
        sig = base64.b64encode(hmac.new(self.key, sts.encode(), hashlib.sha256).digest())
        headers["Authorization"] = f"SharedKey {self.account}:{sig.decode()}"
        req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def create_container(self, name):
        st, body, _ = self.request("PUT", name, {"restype": "container"})
        assert st in (201, 409), (st, body)

    def put(self, container, blob, data):
        st, body, _ = self.request("PUT", f"{container}/{blob}", body=data,
                                   headers={"x-ms-blob-type": "BlockBlob"})
        assert st == 201, (st, body)

    def get(self, container, blob):
        st, body, _ = self.request("GET", f"{container}/{blob}")
        assert st == 200, (st, body[:300])
        return body

    def sas(self, container, permissions="racwdl", hours=1):
        """A service SAS for the container (signed by hand, version 2021-12-02 fields)."""
        import base64
        import hashlib
        import hmac
        import time as _t
        import urllib.parse
        expiry = _t.strftime("%Y-%m-%dT%H:%M:%SZ", _t.gmtime(_t.time() + hours * 3600))
        fields = [permissions, "", expiry, f"/blob/{self.account}/{container}", "", "", "",
                  self.VERSION, "c", "", "", "", "", "", "", ""]
        sts = "\n".join(fields)
        sig = base64.b64encode(hmac.new(self.key, sts.encode(), hashlib.sha256).digest())
        q = {"sv": self.VERSION, "sr": "c", "sp": permissions, "se": expiry,
             "sig": sig.decode()}
        return urllib.parse.urlencode(q)


# ---- Google Cloud Storage (firebase-tools' storage emulator) ----

def gcs(port=None):
    """firebase-tools' storage emulator (GCS JSON API) on 127.0.0.1; no auth checked."""
    need("firebase-tools", "firebase storage emulator")
    port = port or s3dtest.free_tcp_port()
    argv = ["node", os.path.join(EMU_DIR, "gcs.js"), str(port)]
    # its blobs live under os.tmpdir(): give each emulator its own
    tmp = tempfile.mkdtemp(prefix="s3dlio-gcs-")
    e = Emulator(argv, node_env(TMPDIR=tmp), port, tmp, "gcs: listening on")
    e.cleanup_dir = tmp
    return e.start()


def gs_env(endpoint, token=None, emulator=True):
    env = {k: v for k, v in os.environ.items()
           if k not in ("STORAGE_EMULATOR_HOST", "GCS_ENDPOINT_URL", "GOOGLE_OAUTH_ACCESS_TOKEN",
                        "GOOGLE_APPLICATION_CREDENTIALS")}
    env["STORAGE_EMULATOR_HOST" if emulator else "GCS_ENDPOINT_URL"] = endpoint
    if token:
        env["GOOGLE_OAUTH_ACCESS_TOKEN"] = token
    return env


class GcsClient:
    """A minimal independent GCS JSON API client (urllib), sharing no code with the server."""

    def __init__(self, endpoint, token=None):
        self.endpoint, self.token = endpoint.rstrip("/"), token

    def request(self, method, path, query=None, body=None, headers=None):
        import urllib.error
        import urllib.parse
        import urllib.request
        url = self.endpoint + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if body is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def put(self, bucket, name, data):
        st, body, _ = self.request("POST", f"/upload/storage/v1/b/{bucket}/o",
                                   {"uploadType": "media", "name": name}, body=data)
        assert st == 200, (st, body[:300])

    def get(self, bucket, name):
        import urllib.parse
        st, body, _ = self.request(
            "GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
            {"alt": "media"})
        assert st == 200, (st, body[:300])
        return body

    def names(self, bucket, prefix):
        import json
        out, token = [], None
        while True:
            q = {"prefix": prefix, "maxResults": 7}
            if token:
                q["pageToken"] = token
            st, body, _ = self.request("GET", f"/storage/v1/b/{bucket}/o", q)
            assert st == 200, (st, body[:300])
            j = json.loads(body)
            out += [i["name"] for i in j.get("items", [])]
            token = j.get("nextPageToken")
            if not token:
                return out


class Proxy:
    """A loopback HTTP proxy in front of an emulator. intercept(method, path, headers) may
    return (status, content_type, body) to answer instead of the emulator (fault injection,
    auth checks); keep_host forwards the Host header unchanged (SigV4 signs it)."""

    def __init__(self, upstream, intercept=None, keep_host=False):
        import http.server
        import threading
        import urllib.error
        import urllib.request
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, st, hdrs, data, length=None):
                self.send_response(st)
                for k, v in hdrs:
                    self.send_header(k, v)
                # a HEAD answer carries the object's length, not its (empty) body's
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                proxy.seen.append((self.command, self.path, self.headers.get("Authorization")))
                hit = intercept(self.command, self.path, self.headers) if intercept else None
                if hit:
                    st, ctype, data = hit
                    self._reply(st, [("Content-Type", ctype)], data)
                    return
                drop = ("authorization", "content-length") if not keep_host else \
                    ("content-length",)
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in drop + (() if keep_host else ("host",))}
                if not keep_host:
                    hdrs.pop("Host", None)
                req = urllib.request.Request(upstream + self.path, data=body,
                                             method=self.command, headers=hdrs)
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        st, data, rh = r.status, r.read(), r.headers
                except urllib.error.HTTPError as e:
                    st, data, rh = e.code, e.read(), e.headers
                self._reply(st, [(k, v) for k, v in rh.items() if k.lower() not in
                                 ("content-length", "transfer-encoding", "connection")], data,
                            rh.get("Content-Length") if self.command == "HEAD" else None)

            def _safe(self):
                try:
                    self._do()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this request (a cancelled part)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _safe

        self.seen = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def BearerProxy(upstream, token):
    """The GCS emulator checks no auth: this proxy answers GCS's 401 JSON error unless the
    request carries "Authorization: Bearer <token>"."""
    import json

    def check(method, path, headers):
        if headers.get("Authorization") == "Bearer " + token:
            return None
        return (401, "application/json", json.dumps({"error": {
            "code": 401, "message": "Invalid Credentials",
            "errors": [{"reason": "authError"}]}}).encode())

    p = Proxy(upstream, check)
    p.bearer_seen = lambda: [a for _, _, a in p.seen]
    return p


def s3_server(emu, buckets, threads=2):
    """An s3dliod serving the given buckets of an s3rver emulator, with the small cloud sizes
    (CLOUD_FLAGS) so multipart uploads and paging happen on small objects."""
    return s3dtest.start_server([f"s3://{b}/" for b in buckets], threads=threads,
                                extra=CLOUD_FLAGS, env=s3_env(emu.endpoint))


def stop_server(srv):
    """Stop an s3dliod and insist on a clean exit (an ASan build exits non-zero on errors)."""
    rc = srv.stop()
    assert rc == 0, f"s3dliod exited with {rc}:\n{srv.stderr_tail()}"
