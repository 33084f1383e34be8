"""S6 of the benchmark (bench.py): remote objects through s3dliod's object cache.

An S3 emulator (s3rver, from tests/emulators) holds two sets of objects; a second s3dliod
serves s3:// from it with --cache-mem and --metrics. For each set (1 MiB and 16 KiB objects):

- cold:  the first get_many of the set, every byte from the emulator (one run: a second one
         would be warm);
- warm:  get_many again, from the cache, in the same round-robin as the main s3dliod reading
         the same number of objects of the same size from file:// (the local data path): the
         ratio says what the cache costs against local files;
- shared: K client processes (bench.py's S4 counts) get_many a cold copy of the set at once;
         the server's /metrics count the GETs it sent to the backend, against the K x N
         requests the clients made ("backend reads saved").

The emulator is slow (it is JavaScript writing files), so the cold figure is the emulator's,
not the server's; it is there to show the gap the cache closes.
"""
import os
import re
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "py"))

BUCKET = "bench"
_LISTEN_RE = re.compile(r"listening on (\S+)")


def _metric(text, name, **labels):
    """Sum of the samples of name whose labels include labels."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all('%s="%s"' % kv in head for kv in labels.items()):
            total += float(value)
    return total


class CacheBench:
    def __init__(self, bench, orchestrator):
        """bench: bench.py's Bench; orchestrator: the bench.py module (its classes)."""
        o = orchestrator
        self.b, self.log, self.Case, self.Worker, self.Server, self.Unavailable = \
            bench, o.log, o.Case, o.Worker, o.Server, o.Unavailable
        self.KiB, self.MiB, self.free_port = o.KiB, o.MiB, o.free_port
        self.emu = None
        self.server = None
        self.uploader = None
        self.metrics_url = None
        self.info = []  # rows for the report's targets section

    # ---- set-up ----
    def _start_emulator(self):
        try:
            import cloudemu  # tests/py: the same launcher the cloud tests use
            d = tempfile.mkdtemp(prefix="s6-s3rver-", dir=self.b.work)
            self.emu = cloudemu.s3rver(d, [BUCKET])
            self.env = cloudemu.s3_env(self.emu.endpoint)
        except BaseException as e:  # noqa: BLE001 (pytest.skip's exception is not an Exception)
            raise self.Unavailable("S3 emulator: %s" % (str(e).splitlines() or ["?"])[0])

    def _start_server(self, name, cache):
        """An s3dliod for the emulator's bucket: with the cache and /metrics, or plain (the
        uploader: objects written through the cached server might be cached already)."""
        b = self.b
        exe = os.path.join(b.cfg.bin, "s3dliod")
        cmd = [exe, "--listen", "tcp://127.0.0.1:0", "--allow", "s3://%s/" % BUCKET,
               "--threads", str(b.cfg.threads), "--log-level", "warn", "--idle-timeout", "0"]
        port = self.free_port()
        if cache:
            cmd += ["--cache-mem", "1g", "--cache-max-object", "64m",
                    "--metrics", "tcp://127.0.0.1:%d" % port]
        proc, log_path = b.servers._spawn(name, cmd, env=self.env)
        deadline = time.monotonic() + 15
        url = None
        while time.monotonic() < deadline and url is None:
            with open(log_path, errors="replace") as f:
                m = _LISTEN_RE.search(f.read())
            if m:
                url = m.group(1)
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if url is None:
            proc.kill()
            with open(log_path, errors="replace") as f:
                raise self.Unavailable("%s did not start: %s" % (" ".join(cmd[3:]),
                                                                 f.read()[-300:]))
        srv = self.Server(name, proc, log_path, {"tcp": url})
        b.servers.up[name] = srv
        if cache:
            self.metrics_url = "http://127.0.0.1:%d/metrics" % port
        return srv

    def _scrape(self):
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def _backend_gets(self):
        return _metric(self._scrape(), "s3dliod_backend_requests_total", op="GET")

    def _upload(self, prefix, size, n):
        """n objects of size bytes under s3://bench/prefix, written around the cache."""
        code = ("import os, sys, s3dlio\n"
                "s3dlio.connect(sys.argv[1])\n"
                "size, n = int(sys.argv[3]), int(sys.argv[4])\n"
                "block = os.urandom(size + 64)\n"
                "for i in range(n):\n"
                "    s3dlio.put_bytes('%s%06d.bin' % (sys.argv[2], i), block[i % 64:i % 64 + size])\n")
        import subprocess
        r = subprocess.run([self.b.cfg.py, "-c", code, self.uploader.info["tcp"],
                            "s3://%s/%s" % (BUCKET, prefix), str(size), str(n)],
                           env=self.b.env_c(), capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise self.Unavailable("upload to the emulator failed: %s"
                                   % (r.stderr.strip().splitlines() or ["?"])[-1])
        return [(size, "s3://%s/%s%06d.bin" % (BUCKET, prefix, i)) for i in range(n)]

    def _worker(self, items, name):
        b = self.b
        path = os.path.join(b.work, "s6-%s.txt" % name)
        with open(path, "w") as f:
            for size, uri in items:
                f.write("%d %s\n" % (size, uri))
        cmd = [b.cfg.py, os.path.join(HERE, "bench_worker.py"), "s3dlio-c", "get_many",
               self.server.info["tcp"], path, "--mif", "64"]
        return self.Worker(name, cmd, b.env_c(), b.work, timeout=600)

    # ---- the scenario ----
    def run(self):
        b, cfg, Case = self.b, self.b.cfg, self.Case
        try:
            self._start_emulator()
            self.server = self._start_server("s3dliod-cache", True)
            self.uploader = self._start_server("s3dliod-upload", False)
        except self.Unavailable as e:
            self.log("S6 unavailable: %s" % e)
            self.info.append({"target": "S6 cache: warm get_many / file:// get_many",
                              "kind": "reported", "need": None, "ratio": None,
                              "status": "n/a (%s)" % e})
            return
        try:
            for size, n in ((self.MiB, 48 if cfg.quick else 128),
                            (16 * self.KiB, 500 if cfg.quick else 2000)):
                self._one_size(size, n)
        finally:
            if self.emu:
                self.emu.stop()

    def _one_size(self, size, n):
        b, cfg, Case = self.b, self.b.cfg, self.Case
        tag = "1 MiB" if size == self.MiB else "16 KiB"
        short = "1M" if size == self.MiB else "16K"
        try:
            items = self._upload("w%s/" % short, size, n)
            local = b.data.sweep.get(size, [])[:n] if hasattr(b.data, "sweep") else []
            if len(local) < n:
                local = b.data.sets.get("small16K", [])[:n] if size == 16 * self.KiB else local
            # cold: one run, straight from the emulator
            w = self._worker(items, "s6-cold-" + short)
            g0 = self._backend_gets()
            r = w.run()
            cold_gets = self._backend_gets() - g0
            w.quit()
            cold = r["bytes"] / r["seconds"] / 1e9
            self.log("S6  %s cold (from the emulator): %.3f GB/s, %d backend GETs for %d objects"
                     % (tag, cold, cold_gets, n))
            cold_case = Case("S6", "%s s3:// cold (emulator), get_many" % tag, "GB/s",
                             lambda: None, "s3dliod-cache")
            cold_case.runs = [r]
            b.cases.append(cold_case)
        except self.Unavailable as e:
            self.log("S6 %s: unavailable: %s" % (tag, e))
            return
        warm_label = "%s s3:// warm (server cache), get_many, tcp" % tag
        file_label = "%s file:// same sizes (no cache), get_many, tcp" % tag
        g0 = self._backend_gets()
        cases = [Case("S6", warm_label, "GB/s", lambda: self._worker(items, "s6-warm-" + short),
                      "s3dliod-cache")]
        if len(local) == n:
            cases.append(Case("S6", file_label, "GB/s",
                              lambda: b.w_py("s3dlio-c", "get_many", "tcp", local), "s3dliod"))
        b.run_cases(cases)
        warm_gets = self._backend_gets() - g0
        self.info.append({"target": "S6 %s: warm-cache s3:// get_many / file:// get_many" % tag,
                          "kind": "reported", "need": None,
                          "ratio": _ratio(b.find("S6", warm_label), b.find("S6", file_label)),
                          "status": "reported",
                          "value": "%d backend GETs during %d warm runs of %d objects"
                                   % (warm_gets, 2 * cfg.runs + 1, n)})
        # many clients, one cold set
        k = max(cfg.procs)
        shared = self._upload("s%s/" % short, size, n)
        workers = []
        try:
            workers = [self._worker(shared, "s6-shared%d-%s" % (i, short)) for i in range(k)]
            g0 = self._backend_gets()
            for w in workers:
                w.send("run")
            res = [w.result() for w in workers]
            gets = self._backend_gets() - g0
            total = sum(x["bytes"] for x in res)
            span = max(x["t1"] for x in res) - min(x["t0"] for x in res)
            saved = 1 - gets / (k * n)
            self.log("S6  %s: %d clients x %d cold objects: %d backend GETs (%.1f%% saved), "
                     "%.3f GB/s aggregate" % (tag, k, n, gets, 100 * saved, total / span / 1e9))
            self.info.append({"target": "S6 %s: backend reads saved, %d clients reading the "
                                        "same %d cold objects at once" % (tag, k, n),
                              "kind": "reported", "need": None, "ratio": saved,
                              "status": "reported",
                              "value": "%d backend GETs for %d requests; %.3f GB/s aggregate"
                                       % (gets, k * n, total / span / 1e9)})
        except self.Unavailable as e:
            self.log("S6 %s shared: unavailable: %s" % (tag, e))
        finally:
            for w in workers:
                w.quit()


def _ratio(a, b):
    return a / b if a is not None and b else None
