"""bench.py: the benchmark of s3dlio-c against its peers and the physical limit.

Started by tests/bench/run (which builds and installs first). Prepares the data, starts every
server on 127.0.0.1 (s3dliod, nginx, iperf3, the gRPC and Arrow Flight peers), warms the page
cache, runs each scenario several times with the cases of a scenario interleaved round-robin
(so a noisy minute hurts every case alike), and reports medians: one table on stdout,
results/latest.json, results/latest.txt and results/latest.png.

Every client is a worker process speaking one protocol (READY, then "run" -> one JSON line;
see bench_worker.py, bench_client.c, bench_curl.c, bench_limit.c). A case whose peer is
missing or fails is reported "unavailable: why" and never stops the run.

    bench.py --build DIR [--quick] [--data DIR] [--runs N] [--only S1,S2,...]
"""

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def human_size(n):
    for unit, f in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= f and n % f == 0:
            return "%d %s" % (n // f, unit)
    return "%d B" % n


def short_size(n):
    return human_size(n).replace(" ", "").replace("iB", "")


# ---------------------------------------------------------------------------- configuration

class Config:
    def __init__(self, a):
        self.quick = a.quick
        self.build = os.path.abspath(a.build)
        self.data = os.path.abspath(a.data)
        self.out = os.path.abspath(a.out)
        self.runs = a.runs or (3 if a.quick else 5)
        self.only = set(a.only.split(",")) if a.only else None
        q = a.quick
        self.large_n = 4 if q else 16
        self.large_size = 64 * MiB
        self.small_n = 2000 if q else 20000
        self.small_sizes = [16 * KiB, 4 * KiB]
        self.seq_n = 1000 if q else 5000  # sequential get() loops: the first seq_n objects
        self.seq_slow_n = 300 if q else 2000  # requests, gRPC Get, Flight per object
        self.rs_small_n = 2000  # the Rust original's get_many is quadratic in the count
        self.sweep_sizes = ([4 * KiB, 64 * KiB, MiB, 16 * MiB, 64 * MiB] if q else
                            [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB,
                             64 * MiB, 256 * MiB])
        self.sweep_bytes = 128 * MiB if q else 256 * MiB
        self.sweep_max_n = 1000 if q else 2000
        self.procs = [1, 4] if q else [1, 4, 16]
        self.procs_n = 128 if q else 256  # 1 MiB objects each process reads per run
        self.procs_runs = 3
        self.mem_size = 256 * MiB
        self.mem_runs = 1 if q else 3
        self.iperf_secs = 1 if q else 2
        self.turn_warm = not a.no_turn_warm  # an untimed run before each timed one
        self.command = a.command or "bench.py " + " ".join(sys.argv[1:])
        self.curl_par_large = 4
        self.curl_par_small = 16
        self.threads = os.cpu_count() or 2
        self.py = a.python
        self.rs_py = os.path.join(HERE, ".peers", "s3dlio-rs", "bin", "python")
        self.bin = os.path.join(self.build, "bin")
        self.curl_bin = a.curl_bin or os.path.join(self.build, "bench-peers", "bench_curl")

    def sweep_count(self, size):
        return max(2, min(self.sweep_max_n, self.sweep_bytes // size))

    def want(self, scenario):
        return self.only is None or scenario in self.only


# ---------------------------------------------------------------------------- data

class Data:
    """The objects, one file each, under cfg.data; lists of (size, relative path)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.root = cfg.data
        self.block = None
        self.sets = {}

    def _block(self):
        if self.block is None:
            self.block = os.urandom(64 * MiB)
        return self.block

    def make_set(self, name, size, n):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        items = []
        made = 0
        width = max(5, len(str(n)))
        for i in range(n):
            rel = "%s/o%0*d.bin" % (name, width, i)
            path = os.path.join(self.root, rel)
            try:
                ok = os.stat(path).st_size == size
            except FileNotFoundError:
                ok = False
            if not ok:
                self._write(path, size, i)
                made += 1
            items.append((size, rel))
        if made:
            log("data: wrote %d x %s in %s" % (made, human_size(size), name))
        self.sets[name] = items
        return items

    def _write(self, path, size, i):
        # distinct objects (index and size up front) without paying for urandom per file
        blk = self._block()
        head = (i.to_bytes(8, "little") + size.to_bytes(8, "little"))
        with open(path + ".tmp", "wb") as f:
            left, first = size, True
            while left > 0:
                chunk = blk[: min(left, len(blk))]
                if first:
                    chunk = (head + chunk[len(head):])[: len(chunk)]
                    first = False
                f.write(chunk)
                left -= len(chunk)
        os.replace(path + ".tmp", path)

    def prepare(self):
        c = self.cfg
        os.makedirs(self.root, exist_ok=True)
        t = time.monotonic()
        self.make_set("large", c.large_size, c.large_n)
        for s in c.small_sizes:
            self.make_set("small%s" % short_size(s), s, c.small_n)
        self.sweep = {}
        for s in c.sweep_sizes:
            n = c.sweep_count(s)
            if s == c.large_size and n <= c.large_n:
                self.sweep[s] = self.sets["large"][:n]
            elif s in c.small_sizes and n <= c.small_n:
                self.sweep[s] = self.sets["small%s" % short_size(s)][:n]
            else:
                self.sweep[s] = self.make_set("sweep%s" % short_size(s), s, n)
        self.procs_set = (self.sweep.get(MiB) or self.make_set("sweep1M", MiB, c.procs_n))
        if len(self.procs_set) < c.procs_n:
            self.procs_set = self.make_set("sweep1M", MiB, max(c.procs_n, len(self.procs_set)))
        self.procs_set = self.procs_set[: c.procs_n]
        self.mem_big = self.make_set("mem", c.mem_size, 1)
        self.mem_warm = self.sets["small16K"][:1]
        self.block = None
        log("data ready in %.1f s (%s)" % (time.monotonic() - t, self.root))

    def all_items(self):
        seen = set()
        for items in list(self.sets.values()):
            for it in items:
                if it[1] not in seen:
                    seen.add(it[1])
                    yield it

    def warm(self):
        """Reads every file once so that the runs start from the page cache."""
        t = time.monotonic()
        buf = bytearray(8 * MiB)
        total = 0
        for size, rel in self.all_items():
            with open(os.path.join(self.root, rel), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
            total += size
        log("page cache warmed: %.2f GB in %.1f s" % (total / 1e9, time.monotonic() - t))

    def path(self, rel):
        return os.path.join(self.root, rel)

    def uri(self, rel):
        return "file://" + self.path(rel)


# ---------------------------------------------------------------------------- processes

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu(pid):
    """CPU seconds of a process (all its threads): the sum of its threads' run time from
    /proc/PID/task/*/schedstat (nanoseconds), else utime + stime (clock ticks, coarse);
    None when it is gone."""
    try:
        total = 0
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def proc_children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tail(path, n=6):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return ""


class LineReader:
    """Lines of a pipe, read by a thread, waited for with a timeout."""

    def __init__(self, stream, copy_to=None):
        self.q = queue.Queue()
        t = threading.Thread(target=self._pump, args=(stream, copy_to), daemon=True)
        t.start()

    def _pump(self, stream, copy_to):
        out = open(copy_to, "ab", buffering=0) if copy_to else None
        for line in iter(stream.readline, b""):
            if out:
                out.write(line)
            self.q.put(line.decode("utf-8", "replace").rstrip("\n"))
        if out:
            out.close()
        self.q.put(None)

    def get(self, timeout):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return TimeoutError


class Unavailable(Exception):
    pass


class Server:
    """A server process we started; cpu() sums it and its child processes."""

    def __init__(self, name, proc, log_path, info=None):
        self.name, self.proc, self.log_path = name, proc, log_path
        self.info = info or {}

    def pids(self):
        return [self.proc.pid] + proc_children(self.proc.pid)

    def cpu(self):
        total = 0.0
        for p in self.pids():
            c = proc_cpu(p)
            if c is not None:
                total += c
        return total

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except OSError:
                pass


class Servers:
    def __init__(self, cfg, data, work):
        self.cfg, self.data, self.work = cfg, data, work
        self.up = {}
        self.why = {}

    def start_all(self):
        for name, fn in (("s3dliod", self.start_s3dliod), ("nginx", self.start_nginx),
                         ("iperf3", self.start_iperf3), ("grpc", self.start_grpc),
                         ("flight", self.start_flight)):
            try:
                self.up[name] = fn()
                log("started %s %s" % (name, " ".join(
                    "%s=%s" % kv for kv in self.up[name].info.items())))
            except Unavailable as e:
                self.why[name] = str(e)
                log("%s unavailable: %s" % (name, e))

    def get(self, name):
        s = self.up.get(name)
        if s is None:
            raise Unavailable(self.why.get(name, "%s not started" % name))
        if not s.alive():
            raise Unavailable("%s exited: %s" % (name, tail(s.log_path, 3)))
        return s

    def stop_all(self):
        for s in self.up.values():
            s.stop()

    def _spawn(self, name, cmd, **kw):
        log_path = os.path.join(self.work, name + ".log")
        lf = open(log_path, "wb")
        try:
            proc = subprocess.Popen(cmd, stdin=kw.pop("stdin", subprocess.DEVNULL),
                                    stdout=kw.pop("stdout", lf), stderr=kw.pop("stderr", lf),
                                    start_new_session=True, **kw)
        except OSError as e:
            raise Unavailable("cannot run %s: %s" % (cmd[0], e))
        finally:
            lf.close()
        return proc, log_path

    def start_s3dliod(self):
        exe = os.path.join(self.cfg.bin, "s3dliod")
        if not os.access(exe, os.X_OK):
            raise Unavailable("%s not built" % exe)
        sock = os.path.join(self.work, "s3dliod.sock")
        cmd = [exe, "--listen", "tcp://127.0.0.1:0", "--listen", "unix://" + sock,
               "--allow", "file://" + self.data.root + "/", "--threads", str(self.cfg.threads),
               "--log-level", "warn", "--idle-timeout", "0"]
        # it announces its addresses on stderr, its log; a thread keeps copying it to the file
        proc, log_path = self._spawn("s3dliod", cmd, stderr=subprocess.PIPE)
        lines = LineReader(proc.stderr, copy_to=log_path)
        urls = {}
        deadline = time.monotonic() + 10
        while len(urls) < 2 and time.monotonic() < deadline:
            line = lines.get(max(0.1, deadline - time.monotonic()))
            if line is None or line is TimeoutError:
                break
            if "listening on " in line:
                u = line.split("listening on ", 1)[1].strip()
                urls["tcp" if u.startswith("tcp") else "unix"] = u
        if len(urls) < 2:
            proc.kill()
            raise Unavailable("s3dliod did not start: %s" % tail(log_path, 3))
        return Server("s3dliod", proc, log_path, urls)

    def start_nginx(self):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not exe:
            raise Unavailable("nginx not installed (tests/bench/install-peers.sh)")
        d = os.path.join(self.work, "nginx")
        os.makedirs(d, exist_ok=True)
        port = free_port()  # nginx cannot listen on port 0
        sock = os.path.join(self.work, "nginx.sock")
        user = ""
        if os.geteuid() == 0:  # as root nginx would drop its workers to nobody
            import grp
            import pwd
            user = "user %s %s;" % (pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name)
        conf = f"""
{user}
worker_processes {self.cfg.threads};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  types {{}}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    listen unix:{sock};
    root {self.data.root};
  }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        proc, log_path = self._spawn("nginx", [exe, "-p", d, "-c", os.path.join(d, "nginx.conf"),
                                               "-e", os.path.join(d, "error.log")])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable("nginx exited: %s" % (tail(os.path.join(d, "error.log"), 2)
                                                        or tail(log_path, 2)))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                if len(proc_children(proc.pid)) >= 1:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            proc.kill()
            raise Unavailable("nginx did not start listening")
        ver = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
        return Server("nginx", proc, log_path, {"url": "http://127.0.0.1:%d" % port,
                                                "unix": sock, "version": ver.split("/")[-1]})

    def start_iperf3(self):
        exe = shutil.which("iperf3")
        if not exe:
            raise Unavailable("iperf3 not installed (tests/bench/install-peers.sh)")
        port = free_port()
        proc, log_path = self._spawn("iperf3", [exe, "-s", "-B", "127.0.0.1", "-p", str(port)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable("iperf3 exited: %s" % tail(log_path, 2))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        return Server("iperf3", proc, log_path, {"port": port})

    def _start_py_peer(self, kind, probe):
        r = subprocess.run([self.cfg.py, "-c", probe], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise Unavailable("%s (tests/bench/install-peers.sh)" % last)
        proc, log_path = self._spawn(kind, [self.cfg.py, os.path.join(HERE, "peer_servers.py"),
                                            kind, self.data.root],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        lines = LineReader(proc.stdout)
        line = lines.get(30)
        if not isinstance(line, str) or not line.startswith("LISTENING "):
            proc.kill()
            raise Unavailable("%s server did not start: %s" % (kind, tail(log_path, 3)))
        return Server(kind, proc, log_path, {"port": int(line.split()[1])})

    def start_grpc(self):
        return self._start_py_peer("grpc", "import grpc")

    def start_flight(self):
        return self._start_py_peer("flight", "import pyarrow.flight")


class Worker:
    """One client process speaking the READY / run / quit protocol."""

    def __init__(self, name, cmd, env, work, timeout=120):
        self.name, self.timeout = name, timeout
        self.log_path = os.path.join(work, "worker-%s.log" % name.replace(" ", "_").replace("/", "_"))
        lf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=lf, env=env, cwd="/")
        except OSError as e:
            raise Unavailable("cannot run %s: %s" % (cmd[0], e))
        finally:
            lf.close()
        self.lines = LineReader(self.proc.stdout)
        line = self.lines.get(self.timeout)
        if line != "READY":
            self.kill()
            raise Unavailable("did not start: %s" % (tail(self.log_path, 3) or line))

    def send(self, cmd):
        try:
            self.proc.stdin.write((cmd + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def result(self):
        line = self.lines.get(self.timeout)
        if line is TimeoutError:
            self.kill()
            raise Unavailable("timed out after %d s" % self.timeout)
        if line is None:
            raise Unavailable("exited: %s" % tail(self.log_path, 3))
        try:
            d = json.loads(line)
        except ValueError:
            raise Unavailable("bad output: %s" % line[:200])
        if "error" in d:
            raise Unavailable("failed: %s %s" % (d["error"], tail(self.log_path, 2)))
        return d

    def run(self):
        self.send("run")
        return self.result()

    def quit(self):
        self.send("quit")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


# ---------------------------------------------------------------------------- the cases

class Case:
    """One line of the table: a client against a server over a transport."""

    def __init__(self, scenario, label, metric, make, server=None, note=""):
        self.scenario, self.label, self.metric = scenario, label, metric
        self.make = make        # () -> Worker-like (run() -> dict, quit())
        self.server = server    # name of the server whose CPU is charged, or None
        self.note = note
        self.runs = []          # dicts from the worker, plus "server_cpu"
        self.why = None
        self.worker = None
        self.extra = {}

    def value(self, r):
        if self.metric == "obj/s":
            return r["objects"] / r["seconds"]
        return r["bytes"] / r["seconds"] / 1e9

    def summary(self):
        d = {"scenario": self.scenario, "case": self.label, "metric": self.metric,
             "note": self.note}
        d.update(self.extra)
        if self.why or not self.runs:
            d["status"] = "unavailable: " + (self.why or "no runs")
            return d
        vals = [self.value(r) for r in self.runs]
        d["status"] = "ok"
        d["median"] = statistics.median(vals)
        d["min"], d["max"] = min(vals), max(vals)
        d["runs"] = vals
        gb = sum(r["bytes"] for r in self.runs) / 1e9
        d["bytes_per_run"] = self.runs[0]["bytes"]
        d["objects_per_run"] = self.runs[0]["objects"]
        d["client_cpu_s_per_gb"] = sum(r.get("cpu", 0) for r in self.runs) / gb if gb else None
        scpu = [r["server_cpu"] for r in self.runs if r.get("server_cpu") is not None]
        d["server_cpu_s_per_gb"] = sum(scpu) / gb if scpu and gb else None
        return d


class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.work = tempfile.mkdtemp(prefix="s3dlio-bench-")
        self.data = Data(cfg)
        self.servers = Servers(cfg, self.data, self.work)
        self.cases = []
        self.memory = []
        self.procs = []
        self.sweep = {}
        self.lists = {}
        self.cache = None  # S6 (bench_cache.CacheBench)
        self.t_start = time.monotonic()

    # ---- lists and workers ----
    def listfile(self, items, form):
        key = (form, len(items), items[0][1], items[-1][1], sum(s for s, _ in items))
        if key in self.lists:
            return self.lists[key]
        path = os.path.join(self.work, "list-%d.txt" % len(self.lists))
        with open(path, "w") as f:
            for size, rel in items:
                ref = self.data.uri(rel) if form == "uri" else rel
                f.write("%d %s\n" % (size, ref))
        self.lists[key] = path
        return path

    def env_c(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.join(self.cfg.build, "python")
        env.pop("S3DLIO_SERVER", None)
        return env

    def env_plain(self):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("S3DLIO_SERVER", None)
        return env

    def w_py(self, kind, op, transport, items, mif=64, name=None):
        """A Python worker (bench_worker.py)."""
        cfg = self.cfg
        if kind == "s3dlio-c":
            s = self.servers.get("s3dliod")
            target, env, py = s.info[transport], self.env_c(), cfg.py
            form = "uri"
        elif kind == "s3dlio-rs":
            if not os.access(cfg.rs_py, os.X_OK):
                raise Unavailable("s3dlio (Rust, PyPI) not installed (tests/bench/install-peers.sh)")
            target, env, py, form = "-", self.env_plain(), cfg.rs_py, "uri"
        elif kind == "requests":
            target, env, py, form = self.servers.get("nginx").info["url"], self.env_plain(), cfg.py, "rel"
        elif kind == "grpc":
            target = "127.0.0.1:%d" % self.servers.get("grpc").info["port"]
            env, py, form = self.env_plain(), cfg.py, "rel"
        elif kind == "flight":
            target = "grpc://127.0.0.1:%d" % self.servers.get("flight").info["port"]
            env, py, form = self.env_plain(), cfg.py, "rel"
        else:
            raise ValueError(kind)
        cmd = [py, os.path.join(HERE, "bench_worker.py"), kind, op, target,
               self.listfile(items, form), "--mif", str(mif)]
        return Worker(name or "%s-%s" % (kind, op), cmd, env, self.work)

    def w_client(self, mode, transport, items, mif=64):
        exe = os.path.join(self.cfg.bin, "bench_client")
        if not os.access(exe, os.X_OK):
            raise Unavailable("bench_client not built")
        s = self.servers.get("s3dliod")
        return Worker("bench_client-" + mode, [exe, s.info[transport], self.listfile(items, "uri"),
                                               mode, str(mif)], self.env_plain(), self.work)

    def w_curl(self, transport, items, parallel):
        if not os.access(self.cfg.curl_bin, os.X_OK):
            raise Unavailable("bench_curl not built (libcurl4-openssl-dev, pkg-config)")
        s = self.servers.get("nginx")
        base = s.info["url"] if transport == "tcp" else "http://localhost"
        upath = s.info["unix"] if transport == "unix" else "-"
        return Worker("bench_curl", [self.cfg.curl_bin, base, self.listfile(items, "rel"),
                                     str(parallel), upath], self.env_plain(), self.work)

    def w_limit(self, transport, items):
        exe = os.path.join(self.cfg.bin, "bench_limit")
        if not os.access(exe, os.X_OK):
            raise Unavailable("bench_limit not built")
        cmd = [exe, "-s"] + (["-u"] if transport == "unix" else []) + [self.data.path(r) for _, r in items]
        return Worker("bench_limit", cmd, self.env_plain(), self.work)

    def w_iperf(self):
        s = self.servers.get("iperf3")
        return IperfRunner(s.info["port"], self.cfg.iperf_secs)

    # ---- running a scenario: the cases interleaved round-robin ----
    def run_cases(self, cases, runs=None):
        runs = runs or self.cfg.runs
        live = []
        for c in cases:
            self.cases.append(c)
            try:
                c.worker = c.make()
                live.append(c)
            except Unavailable as e:
                c.why = str(e)
                log("%s / %s: unavailable: %s" % (c.scenario, c.label, e))
        for rnd in range(runs + 1):  # round 0 warms connections, pools and caches
            # each round starts one case later: which case follows an idle gap (and so, in a VM
            # with free page reporting, faults its fresh memory back from the host) rotates
            k = rnd % len(live) if live else 0
            for c in live[k:] + live[:k]:
                if c.why:
                    continue
                try:
                    srv = self.servers.up.get(c.server) if c.server else None
                    if rnd > 0 and self.cfg.turn_warm and not isinstance(c.worker, IperfRunner):
                        # untimed: the case's steady state, as in a training loop, rather
                        # than whatever the previous case left (memory freed seconds ago
                        # goes back to the host here: see README, "This machine")
                        c.worker.run()
                    c0 = srv.cpu() if srv else None
                    r = c.worker.run()
                    if srv:
                        r["server_cpu"] = srv.cpu() - c0
                    if rnd > 0:
                        c.runs.append(r)
                except Unavailable as e:
                    c.why = str(e)
                    log("%s / %s: %s" % (c.scenario, c.label, e))
        for c in live:
            try:
                c.worker.quit()
            except Exception:  # noqa: BLE001 (cleanup)
                pass
        for c in cases:
            s = c.summary()
            if s["status"] == "ok":
                log("%-3s %-44s %10.3f %s" % (c.scenario, c.label, s["median"], c.metric))

    # ---- scenarios ----
    def s1_large(self):
        cfg, items = self.cfg, self.data.sets["large"]
        sc = "S1"
        n = "%d x %s" % (len(items), human_size(cfg.large_size))
        P = cfg.curl_par_large
        cases = [
            Case(sc, "limit: sendfile -> recv buffer, tcp", "GB/s", lambda: self.w_limit("tcp", items)),
            Case(sc, "limit: sendfile -> recv buffer, unix", "GB/s", lambda: self.w_limit("unix", items)),
            Case(sc, "iperf3, 1 stream, tcp", "GB/s", self.w_iperf, "iperf3"),
            Case(sc, "s3dlio-c get_many, tcp", "GB/s", lambda: self.w_py("s3dlio-c", "get_many", "tcp", items), "s3dliod"),
            Case(sc, "s3dlio-c get_many, unix", "GB/s", lambda: self.w_py("s3dlio-c", "get_many", "unix", items), "s3dliod"),
            Case(sc, "s3dlio-c get() loop, tcp", "GB/s", lambda: self.w_py("s3dlio-c", "get", "tcp", items), "s3dliod"),
            Case(sc, "s3dlio-c get_into() loop, tcp", "GB/s", lambda: self.w_py("s3dlio-c", "get_into", "tcp", items), "s3dliod"),
            Case(sc, "libs3dlio C get_many, own buffers, tcp", "GB/s", lambda: self.w_client("many", "tcp", items), "s3dliod"),
            Case(sc, "libs3dlio C get_many, own buffers, unix", "GB/s", lambda: self.w_client("many", "unix", items), "s3dliod"),
            Case(sc, "nginx + libcurl (%d conns), tcp" % P, "GB/s", lambda: self.w_curl("tcp", items, P), "nginx"),
            Case(sc, "nginx + libcurl (%d conns), unix" % P, "GB/s", lambda: self.w_curl("unix", items, P), "nginx"),
            Case(sc, "nginx + Python requests (.content), tcp", "GB/s", lambda: self.w_py("requests", "get", "tcp", items), "nginx"),
            Case(sc, "gRPC Python, 1 MiB chunks, tcp", "GB/s", lambda: self.w_py("grpc", "get_many", "tcp", items), "grpc"),
            Case(sc, "Arrow Flight do_get, tcp", "GB/s", lambda: self.w_py("flight", "get_many", "tcp", items), "flight"),
            Case(sc, "s3dlio (Rust) get_many, in-process", "GB/s", lambda: self.w_py("s3dlio-rs", "get_many", "-", items)),
        ]
        for c in cases:
            c.extra["objects"] = n
        self.run_cases(cases)

    def s2_small(self):
        cfg = self.cfg
        P = cfg.curl_par_small
        for size in cfg.small_sizes:
            items = self.data.sets["small%s" % short_size(size)]
            seq = items[: cfg.seq_n]
            slow = items[: cfg.seq_slow_n]
            rs = items[: cfg.rs_small_n]
            sc = "S2"
            tag = human_size(size)
            cases = [
                Case(sc, "%s s3dlio-c get_many(64), tcp" % tag, "obj/s", lambda: self.w_py("s3dlio-c", "get_many", "tcp", items), "s3dliod"),
                Case(sc, "%s s3dlio-c get_many(64), unix" % tag, "obj/s", lambda: self.w_py("s3dlio-c", "get_many", "unix", items), "s3dliod"),
                Case(sc, "%s s3dlio-c get() loop, tcp" % tag, "obj/s", lambda: self.w_py("s3dlio-c", "get", "tcp", seq), "s3dliod"),
                Case(sc, "%s s3dlio-c get_into() loop, tcp" % tag, "obj/s", lambda: self.w_py("s3dlio-c", "get_into", "tcp", seq), "s3dliod"),
                Case(sc, "%s libs3dlio C get_many(64), tcp" % tag, "obj/s", lambda: self.w_client("many", "tcp", items), "s3dliod"),
                Case(sc, "%s nginx + libcurl (%d conns), tcp" % (tag, P), "obj/s", lambda: self.w_curl("tcp", items, P), "nginx"),
                Case(sc, "%s nginx + libcurl (1 conn, sequential)" % tag, "obj/s", lambda: self.w_curl("tcp", seq, 1), "nginx"),
                Case(sc, "%s nginx + Python requests, sequential" % tag, "obj/s", lambda: self.w_py("requests", "get", "tcp", slow), "nginx"),
                Case(sc, "%s gRPC Python, one stream" % tag, "obj/s", lambda: self.w_py("grpc", "get_many", "tcp", items), "grpc"),
                Case(sc, "%s Arrow Flight do_get" % tag, "obj/s", lambda: self.w_py("flight", "get_many", "tcp", items), "flight"),
                # its get_many costs O(n) per object (42 us at 1,000 objects, 316 us at
                # 10,000): 20,000 would take minutes, so it reads the first rs_small_n
                Case(sc, "%s s3dlio (Rust) get_many(64), in-process, %d objs" % (tag, len(rs)), "obj/s",
                     lambda: self.w_py("s3dlio-rs", "get_many", "-", rs)),
            ]
            for c in cases:
                c.extra["size"] = size
            self.run_cases(cases)

    def s3_sweep(self):
        cfg = self.cfg
        for size in cfg.sweep_sizes:
            items = self.data.sweep[size]
            P = cfg.curl_par_small if size < MiB else cfg.curl_par_large
            sc = "S3"
            tag = "%s x%d" % (short_size(size), len(items))
            cases = [
                ("limit (sendfile -> recv)", Case(sc, "%s limit, tcp" % tag, "GB/s", lambda: self.w_limit("tcp", items))),
                ("s3dlio-c get_many (Python)", Case(sc, "%s s3dlio-c get_many, tcp" % tag, "GB/s", lambda: self.w_py("s3dlio-c", "get_many", "tcp", items), "s3dliod")),
                ("libs3dlio C get_many", Case(sc, "%s libs3dlio C get_many, tcp" % tag, "GB/s", lambda: self.w_client("many", "tcp", items), "s3dliod")),
                ("nginx + libcurl", Case(sc, "%s nginx + libcurl (%d conns), tcp" % (tag, P), "GB/s", lambda: self.w_curl("tcp", items, P), "nginx")),
                ("s3dlio (Rust) in-process", Case(sc, "%s s3dlio (Rust) get_many, in-process" % tag, "GB/s", lambda: self.w_py("s3dlio-rs", "get_many", "-", items))),
            ]
            for series, c in cases:
                c.extra.update(size=size, series=series, count=len(items))
            self.run_cases([c for _, c in cases])
            for series, c in cases:
                s = c.summary()
                self.sweep.setdefault(series, {})[size] = s

    def s4_procs(self):
        cfg = self.cfg
        items = self.data.procs_set
        for label, server, make in (
                ("s3dlio-c get_many, tcp", "s3dliod",
                 lambda i: self.w_py("s3dlio-c", "get_many", "tcp", items, name="proc%d" % i)),
                ("nginx + libcurl (%d conns each), tcp" % cfg.curl_par_large, "nginx",
                 lambda i: self.w_curl("tcp", items, cfg.curl_par_large))):
            for n in cfg.procs:
                row = {"scenario": "S4", "case": "%s, %d process%s" % (label, n, "es" if n > 1 else ""),
                       "client": label, "server": server, "procs": n, "metric": "GB/s",
                       "objects": "%d x %s per process" % (len(items), human_size(items[0][0]))}
                self.procs.append(row)
                workers = []
                try:
                    srv = self.servers.get(server)
                    for i in range(n):
                        workers.append(make(i))
                    vals, cpus, gbs = [], [], []
                    for rnd in range(cfg.procs_runs + 1):
                        c0 = srv.cpu()
                        for w in workers:
                            w.send("run")
                        res = [w.result() for w in workers]
                        cpu = srv.cpu() - c0
                        if rnd == 0:
                            continue
                        total = sum(r["bytes"] for r in res)
                        span = max(r["t1"] for r in res) - min(r["t0"] for r in res)
                        vals.append(total / span / 1e9)
                        cpus.append(cpu)
                        gbs.append(total / 1e9)
                    row.update(status="ok", median=statistics.median(vals), min=min(vals),
                               max=max(vals), runs=vals,
                               server_cpu_s_per_gb=sum(cpus) / sum(gbs),
                               server_cpu_s=sum(cpus), gb=sum(gbs))
                    log("S4  %-44s %10.3f GB/s  server %.3f s/GB" % (row["case"], row["median"],
                                                                     row["server_cpu_s_per_gb"]))
                except Unavailable as e:
                    row["status"] = "unavailable: %s" % e
                    log("S4 %s: unavailable: %s" % (row["case"], e))
                finally:
                    for w in workers:
                        w.quit()

    def s5_memory(self):
        cfg = self.cfg
        big = self.data.mem_big
        large = self.data.sets["large"][:4] if cfg.large_size * 4 == cfg.mem_size else big
        warm = self.data.mem_warm
        rows = [
            ("s3dlio-c get", "s3dlio-c", "get", "tcp", warm + big, True),
            ("s3dlio-c get_many", "s3dlio-c", "get_many", "tcp", warm + large, True),
            ("s3dlio-c get_into", "s3dlio-c", "get_into", "tcp", warm + big, True),
            ("Python requests .content", "requests", "get", "tcp", warm + big, False),
            ("gRPC Python (chunks joined)", "grpc", "get", "tcp", warm + big, False),
            ("Arrow Flight do_get (read_all)", "flight", "get_many", "tcp", warm + big, False),
            ("s3dlio (Rust) get", "s3dlio-rs", "get", "-", warm + big, False),
            ("s3dlio (Rust) get_many", "s3dlio-rs", "get_many", "-", warm + large, False),
        ]
        for label, kind, op, transport, items, target in rows:
            row = {"scenario": "S5", "case": label, "metric": "peak RSS", "target": target,
                   "objects": "%d x %s" % (len(items) - 1, human_size(items[-1][0]))}
            self.memory.append(row)
            try:
                w = self.w_mem_cmd(kind, op, transport, items)
                deltas, held = [], None
                for _ in range(cfg.mem_runs):
                    r = subprocess.run(w[0], env=w[1], capture_output=True, text=True,
                                       timeout=120, cwd="/")
                    line = (r.stdout.strip().splitlines() or [""])[-1]
                    if r.returncode != 0 or not line.startswith("{"):
                        raise Unavailable("failed: %s" % ((r.stderr.strip().splitlines() or ["?"])[-1]))
                    d = json.loads(line)
                    deltas.append(d["delta"])
                    held = d["held"]
                delta = statistics.median(deltas)
                row.update(status="ok", delta=delta, held=held, ratio=delta / held,
                           limit=1.1 * held + 64 * MiB, runs=deltas)
                log("S5  %-44s peak-base %6.0f MiB for %4.0f MiB held (%.2fx)" % (
                    label, delta / MiB, held / MiB, delta / held))
            except (Unavailable, subprocess.TimeoutExpired) as e:
                row["status"] = "unavailable: %s" % e
                log("S5 %s: unavailable: %s" % (label, e))

    def s6_cache(self):
        """Remote objects through the server's cache: bench_cache.py."""
        import bench_cache
        self.cache = bench_cache.CacheBench(self, sys.modules[__name__])
        self.cache.run()

    def w_mem_cmd(self, kind, op, transport, items):
        cfg = self.cfg
        if kind == "s3dlio-c":
            target, env, py, form = self.servers.get("s3dliod").info[transport], self.env_c(), cfg.py, "uri"
        elif kind == "s3dlio-rs":
            if not os.access(cfg.rs_py, os.X_OK):
                raise Unavailable("s3dlio (Rust, PyPI) not installed (tests/bench/install-peers.sh)")
            target, env, py, form = "-", self.env_plain(), cfg.rs_py, "uri"
        elif kind == "requests":
            target, env, py, form = self.servers.get("nginx").info["url"], self.env_plain(), cfg.py, "rel"
        elif kind == "grpc":
            target, env, py, form = "127.0.0.1:%d" % self.servers.get("grpc").info["port"], self.env_plain(), cfg.py, "rel"
        elif kind == "flight":
            target, env, py, form = "grpc://127.0.0.1:%d" % self.servers.get("flight").info["port"], self.env_plain(), cfg.py, "rel"
        else:
            raise ValueError(kind)
        return ([py, os.path.join(HERE, "bench_worker.py"), kind, op, target,
                 self.listfile(items, form), "--mem"], env)

    # ---- the whole run ----
    def run(self):
        cfg = self.cfg
        self.data.prepare()
        self.data.warm()
        self.servers.start_all()
        try:
            for name, fn in (("S1", self.s1_large), ("S2", self.s2_small), ("S3", self.s3_sweep),
                             ("S4", self.s4_procs), ("S5", self.s5_memory),
                             ("S6", self.s6_cache)):
                if cfg.want(name):
                    t = time.monotonic()
                    log("---- %s" % name)
                    fn()
                    log("%s done in %.0f s" % (name, time.monotonic() - t))
        finally:
            self.servers.stop_all()
        return self.report()

    # ---- report ----
    def find(self, scenario, label):
        for c in self.cases:
            if c.scenario == scenario and c.label == label:
                s = c.summary()
                return s.get("median") if s["status"] == "ok" else None
        return None

    def targets(self):
        cfg = self.cfg
        t = []

        def ratio(name, num, den, need, kind="target"):
            row = {"target": name, "kind": kind, "need": need}
            if num is None or den is None or not den:
                row.update(ratio=None, status="n/a (a figure is missing)")
            else:
                r = num / den
                row["ratio"] = r
                row["status"] = ("met" if r >= need else "missed") if kind == "target" else "reported"
            t.append(row)

        P, Ps = cfg.curl_par_large, cfg.curl_par_small
        big = self.find("S1", "s3dlio-c get_many, tcp")
        ratio("large, tcp: s3dlio-c get_many / sendfile-to-buffer limit >= 0.9", big,
              self.find("S1", "limit: sendfile -> recv buffer, tcp"), 0.9)
        ratio("large, tcp: s3dlio-c get_many / nginx+libcurl >= 1.2", big,
              self.find("S1", "nginx + libcurl (%d conns), tcp" % P), 1.2)
        small = self.find("S2", "16 KiB s3dlio-c get_many(64), tcp")
        ratio("16 KiB: s3dlio-c get_many objects/s / nginx+libcurl >= 2", small,
              self.find("S2", "16 KiB nginx + libcurl (%d conns), tcp" % Ps), 2.0)
        for size in cfg.small_sizes:
            tag = human_size(size)
            ratio("%s: get_many / sequential get() >= 4" % tag,
                  self.find("S2", "%s s3dlio-c get_many(64), tcp" % tag),
                  self.find("S2", "%s s3dlio-c get() loop, tcp" % tag), 4.0)
        for m in self.memory:
            if not m.get("target"):
                continue
            row = {"target": "memory, %s: peak RSS <= 1.1 x held + 64 MiB" % m["case"],
                   "kind": "target", "need": "<= %.0f MiB" % ((1.1 * m["held"] + 64 * MiB) / MiB)
                   if m.get("held") else None}
            if m.get("status") == "ok":
                row["ratio"] = m["delta"] / m["limit"]
                row["value"] = "%.0f of %.0f MiB allowed" % (m["delta"] / MiB, m["limit"] / MiB)
                row["status"] = "met" if m["delta"] <= m["limit"] else "missed"
            else:
                row.update(ratio=None, status="n/a (%s)" % m.get("status"))
            t.append(row)
        s3 = [p for p in self.procs if p["server"] == "s3dliod" and p.get("status") == "ok"]
        ng = [p for p in self.procs if p["server"] == "nginx" and p.get("status") == "ok"]
        row = {"target": "server CPU s per GB served (S4, all process counts): s3dliod <= nginx",
               "kind": "target", "need": "<= 1"}
        if s3 and ng:
            a = sum(p["server_cpu_s"] for p in s3) / sum(p["gb"] for p in s3)
            b = sum(p["server_cpu_s"] for p in ng) / sum(p["gb"] for p in ng)
            row.update(ratio=a / b if b else None, value="%.3f vs %.3f s/GB" % (a, b),
                       status="met" if a <= b else "missed")
        else:
            row.update(ratio=None, status="n/a (a figure is missing)")
        t.append(row)
        ratio("large: s3dlio-c get_many tcp / s3dlio (Rust) in-process", big,
              self.find("S1", "s3dlio (Rust) get_many, in-process"), None, "reported")
        ratio("large: s3dlio-c get_many tcp / Arrow Flight", big,
              self.find("S1", "Arrow Flight do_get, tcp"), None, "reported")
        ratio("16 KiB: s3dlio-c get_many tcp / s3dlio (Rust) in-process (%d objects)"
              % min(cfg.rs_small_n, cfg.small_n), small,
              self.find("S2", "16 KiB s3dlio (Rust) get_many(64), in-process, %d objs"
                        % min(cfg.rs_small_n, cfg.small_n)), None, "reported")
        ratio("16 KiB: s3dlio-c get_many tcp / Arrow Flight", small,
              self.find("S2", "16 KiB Arrow Flight do_get"), None, "reported")
        if self.cache is not None:
            t.extend(self.cache.info)
        return t

    def report(self):
        cfg = self.cfg
        targets = self.targets()
        rows = [c.summary() for c in self.cases]
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": cfg.command, "turn_warm": cfg.turn_warm,
            "quick": cfg.quick, "runs": cfg.runs, "cores": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "git": git_rev(), "elapsed_s": round(time.monotonic() - self.t_start, 1),
            "servers": {k: v.info for k, v in self.servers.up.items()},
            "unavailable": self.servers.why,
            "s3dliod_threads": cfg.threads, "nginx_workers": cfg.threads,
        }
        text = format_table(meta, rows, self.procs, self.memory, targets)
        print(text)
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "latest.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows, "procs": self.procs, "memory": self.memory,
                       "targets": targets,
                       "sweep": {k: {str(s): v for s, v in d.items()} for k, d in self.sweep.items()}},
                      f, indent=1, default=str)
        with open(os.path.join(cfg.out, "latest.txt"), "w") as f:
            f.write(text + "\n")
        png = os.path.join(cfg.out, "latest.png")
        why = chart(self.sweep, png, meta)
        # a copy per mode, so that a --quick run does not hide the last full one
        mode = "quick" if cfg.quick else "full"
        for ext in ("json", "txt", "png"):
            src = os.path.join(cfg.out, "latest." + ext)
            if os.path.exists(src) and cfg.only is None:
                shutil.copyfile(src, os.path.join(cfg.out, "latest-%s.%s" % (mode, ext)))
        log("wrote %s, latest.txt, %s (and latest-%s.*)" % (
            os.path.join(cfg.out, "latest.json"),
            png if why is None else "no chart (%s)" % why, mode))
        return 0


class IperfRunner:
    """iperf3 over loopback, one stream, as a worker: each run is one iperf3 client."""

    def __init__(self, port, secs):
        self.port, self.secs = port, secs

    def run(self):
        cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(self.port), "-t", str(self.secs), "-J"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.secs + 30)
            d = json.loads(r.stdout)
            bps = d["end"]["sum_received"]["bits_per_second"]
            secs = d["end"]["sum_received"]["seconds"]
            cpu = d["end"]["cpu_utilization_percent"]["host_total"] / 100 * secs
        except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
            raise Unavailable("iperf3 client failed: %s" % e)
        return {"seconds": secs, "bytes": int(bps / 8 * secs), "objects": 1, "cpu": cpu}

    def quit(self):
        pass


def git_rev():
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def fmt_val(v, metric):
    if v is None:
        return "-"
    if metric == "obj/s":
        return "%.0f" % v
    return "%.3f" % v


def format_table(meta, rows, procs, memory, targets):
    out = []
    w = 58
    out.append("s3dlio-c benchmark  %s  (%s; %d runs each, median; %s cores; kernel %s; git %s)"
               % (meta["date"], meta["command"], meta["runs"], meta["cores"], meta["kernel"],
                  meta["git"]))
    names = {"S1": "S1 large objects", "S2": "S2 small objects", "S3": "S3 size sweep",
             "S6": "S6 remote objects through the server cache (S3 emulator)"}
    hdr = "%-*s %10s %-6s %17s %9s %9s" % (w, "case", "median", "unit", "min..max", "srv s/GB",
                                           "cli s/GB")
    last = None
    for r in rows:
        if r["scenario"] != last:
            last = r["scenario"]
            extra = ""
            if last == "S1" and r.get("objects"):
                extra = " (%s)" % r["objects"]
            out.append("")
            out.append("== %s%s" % (names.get(last, last), extra))
            out.append(hdr)
        if r["status"] != "ok":
            out.append("%-*s %s" % (w, r["case"], r["status"][:110]))
            continue
        sc = r.get("server_cpu_s_per_gb")
        cc = r.get("client_cpu_s_per_gb")
        out.append("%-*s %10s %-6s %17s %9s %9s" % (
            w, r["case"], fmt_val(r["median"], r["metric"]), r["metric"],
            "%s..%s" % (fmt_val(r["min"], r["metric"]), fmt_val(r["max"], r["metric"])),
            "%.3f" % sc if sc is not None else "-", "%.3f" % cc if cc is not None else "-"))
    if procs:
        out.append("")
        out.append("== S4 concurrent client processes (%s), aggregate" % procs[0]["objects"])
        out.append("%-*s %10s %-6s %17s %9s" % (w, "case", "median", "unit", "min..max", "srv s/GB"))
        for p in procs:
            if p.get("status") != "ok":
                out.append("%-*s %s" % (w, p["case"], p["status"][:110]))
                continue
            out.append("%-*s %10.3f %-6s %17s %9.3f" % (
                w, p["case"], p["median"], "GB/s", "%.3f..%.3f" % (p["min"], p["max"]),
                p["server_cpu_s_per_gb"]))
    if memory:
        out.append("")
        out.append("== S5 memory: peak RSS minus baseline, fresh process per call")
        out.append("%-*s %10s %10s %7s %12s" % (w, "call", "peak-base", "held", "ratio", "target"))
        for m in memory:
            if m.get("status") != "ok":
                out.append("%-*s %s" % (w, m["case"], m["status"][:110]))
                continue
            out.append("%-*s %6.0f MiB %6.0f MiB %6.2fx %12s" % (
                w, m["case"], m["delta"] / MiB, m["held"] / MiB, m["ratio"],
                ("<= %.0f MiB" % (m["limit"] / MiB)) if m.get("target") else "(reported)"))
    out.append("")
    out.append("== targets (ratios from this run; never asserted)")
    for t in targets:
        r = t.get("ratio")
        v = ("%.2fx" % r) if r is not None else "-"
        if t.get("value"):
            v += " (%s)" % t["value"]
        out.append("  %-8s %-76s %s" % (t["status"].split(" ")[0] if t["status"] != "reported"
                                        else "info", t["target"], v))
    if meta.get("unavailable"):
        out.append("")
        for k, v in meta["unavailable"].items():
            out.append("unavailable: %s: %s" % (k, v))
    out.append("")
    out.append("elapsed %.0f s" % meta["elapsed_s"])
    return "\n".join(out)


def chart(sweep, png, meta):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return "matplotlib unavailable: %s" % e
    if not sweep:
        return "no sweep"
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for series, pts in sweep.items():
        xs = sorted(s for s, v in pts.items() if v.get("status") == "ok")
        if not xs:
            continue
        ys = [pts[s]["median"] for s in xs]
        ops = [pts[s]["median"] * 1e9 / s for s in xs]
        style = "--" if series.startswith("limit") else "-"
        line, = ax.plot(xs, ys, style, marker="o", label=series)
        ax.fill_between(xs, [pts[s]["min"] for s in xs], [pts[s]["max"] for s in xs],
                        color=line.get_color(), alpha=0.12, linewidth=0)
        ax2.plot(xs, ops, style, marker="o", label=series, color=line.get_color())
    for a, yl in ((ax, "GB/s (median; band: min..max of the runs)"), (ax2, "objects/s (median)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("object size")
        a.set_ylabel(yl)
        a.grid(True, which="both", alpha=0.3)
        ticks = sorted({s for pts in sweep.values() for s in pts})
        a.set_xticks(ticks)
        a.set_xticklabels([short_size(s) for s in ticks], rotation=45)
    ax2.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle("s3dlio-c size sweep over loopback TCP (%s, %s, %s cores)" % (
        meta["command"], meta["date"][:16], meta["cores"]))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=os.path.join(HERE, ".data"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--only", default="", help="scenarios to run, e.g. S1,S5")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the Python workers")
    ap.add_argument("--curl-bin", default="")
    ap.add_argument("--no-turn-warm", action="store_true",
                    help="time each case's first run after the other cases (no untimed run)")
    ap.add_argument("--command", default="", help="how this run was started, for the report")
    a = ap.parse_args()
    cfg = Config(a)
    b = Bench(cfg)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return b.run()
    except KeyboardInterrupt:
        log("interrupted")
        b.servers.stop_all()
        return 130
    finally:
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
