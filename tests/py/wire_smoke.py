#!/usr/bin/env python3
"""wire_smoke.py: speak the s3dlio wire protocol to a real s3dliod, frame by frame.

Starts s3dliod (S3DLIOD env var, or the first argument, or build/bin/s3dliod) on an
ephemeral port with a temporary --allow root and checks the server side of PROTOCOL.md:
HELLO/WELCOME, GET (whole, ranges, interleaving, cancel, CRC32C), STAT, LIST, PUT, DELETE,
the error codes and messages, hostile frames, BUSY, idle timeout, Unix sockets, SIGTERM
draining and --parent-pid. Needs only python3-msgpack. Run: python3 wire_smoke.py [s3dliod]
"""
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

HELLO, GET, STAT, LIST, PUT, DELETE, CANCEL = 1, 2, 3, 4, 5, 6, 7
WELCOME, HEADER, ENTRY, ERROR, DATA, END = 16, 17, 18, 19, 32, 33
E = dict(NOT_FOUND=1, PERMISSION=2, INVALID=3, BUSY=4, IO=6, CANCELLED=8, PROTOCOL=9,
         RANGE=10, UNSUPPORTED=11, CHECKSUM=12, SHUTDOWN=13)
RECURSIVE = 1

# ---- CRC32C (Castagnoli) ----

def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _crc_table()


def crc32c_py(data, crc=0):
    crc ^= 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _isal():
    name = ctypes.util.find_library("isal")
    if not name:
        return None
    lib = ctypes.CDLL(name)
    lib.crc32_iscsi.restype = ctypes.c_uint32
    lib.crc32_iscsi.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
    return lib


_LIB = _isal()


def crc32c(data):
    """The table version is the reference; ISA-L (checked against it) only makes big
    inputs fast."""
    if _LIB is None or len(data) < 65536:
        return crc32c_py(data)
    return (~_LIB.crc32_iscsi(bytes(data), len(data), 0xFFFFFFFF)) & 0xFFFFFFFF


assert crc32c_py(b"123456789") == 0xE3069283
if _LIB is not None:
    _probe = os.urandom(70000)
    assert crc32c(_probe) == crc32c_py(_probe), "ISA-L disagrees with the reference CRC32C"

# ---- a minimal client ----


def pack(frame):
    return msgpack.packb(frame, use_bin_type=True)


def data_frame(rid, off, payload):
    return pack([DATA, rid, off]) + pack(bytes(payload))


class Conn:
    def __init__(self, addr, hello=True):
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(addr)
        self.unp = msgpack.Unpacker(raw=False, max_buffer_size=256 << 20)
        self.welcome = None
        if hello:
            self.send([HELLO, 0, 1, None, "wire_smoke"])
            self.welcome = self.frame()
            assert self.welcome[0] == WELCOME, self.welcome

    def send(self, *frames):
        self.sock.sendall(b"".join(pack(f) for f in frames))

    def raw(self, b):
        self.sock.sendall(b)

    def _next(self):
        while True:
            try:
                return next(self.unp)
            except StopIteration:
                pass
            b = self.sock.recv(1 << 20)
            if not b:
                raise EOFError("server closed the connection")
            self.unp.feed(b)

    def frame(self):
        """One frame; a DATA frame comes back as [32, id, offset, payload]."""
        f = self._next()
        assert isinstance(f, list), f
        if f[0] == DATA:
            payload = self._next()
            assert isinstance(payload, bytes), type(payload)
            f = f + [payload]
        return f

    def collect(self, ids):
        """Frames per id until each id has its terminal frame (END or ERROR); also the order
        in which the terminal frames came."""
        want = set(ids)
        out = {i: [] for i in ids}
        order = []
        while want:
            f = self.frame()
            assert f[1] in out, "frame for unexpected id: %r" % (f[:4],)
            out[f[1]].append(f)
            if f[0] in (END, ERROR):
                assert f[1] in want, "second terminal frame for id %d" % f[1]
                want.discard(f[1])
                order.append(f[1])
        return out, order

    def expect_eof(self):
        try:
            while True:
                self.frame()
        except (EOFError, ConnectionResetError):
            return
        except socket.timeout:
            raise AssertionError("connection was not closed")

    def close(self):
        self.sock.close()


def body(frames):
    """Check a GET reply and return its bytes."""
    assert frames[0][0] == HEADER, frames[0]
    size = frames[0][2]
    data = bytearray()
    for f in frames[1:-1]:
        assert f[0] == DATA, f[:3]
        assert f[2] == len(data), "DATA offset %d, expected %d" % (f[2], len(data))
        data += f[3]
    end = frames[-1]
    assert end[0] == END, end
    assert end[2] == size == len(data), (end, size, len(data))
    assert end[3] == crc32c(data), "END CRC32C %08x, data %08x" % (end[3], crc32c(data))
    return bytes(data)


def error_of(frames, code, *needles):
    f = frames[-1]
    assert f[0] == ERROR, f[:5]
    assert f[2] == E[code], "code %d, expected %s (%s)" % (f[2], code, f[3])
    for n in needles:
        assert n in f[3], "message %r lacks %r" % (f[3], n)
    return f[3]


# ---- the server ----


class Server:
    def __init__(self, binary, *args, listen=None):
        self.args = [binary, "--listen", listen or "tcp://127.0.0.1:0"] + list(args)
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.addr = None
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("s3dliod exited: %s" % "".join(self.lines))
            self.lines.append(line)
            m = re.match(r"s3dliod: listening on tcp://([\d.]+):(\d+)$", line.strip())
            if m:
                self.addr = (m.group(1), int(m.group(2)))
            m = re.match(r"s3dliod: listening on unix://(/.*)$", line.strip())
            if m:
                self.addr = m.group(1)
            if self.addr:
                break
        assert self.addr, "no 'listening on' line"
        self.reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self.reader.start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if os.environ.get("WIRE_SMOKE_VERBOSE"):
                sys.stderr.write(line)

    def conn(self, hello=True):
        return Conn(self.addr, hello)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.alive():
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.reader.join(2)
        return rc


# ---- the checks ----

class Smoke:
    def __init__(self, binary):
        self.binary = binary
        self.tmp = tempfile.mkdtemp(prefix="s3dlio-smoke-")
        self.root = os.path.join(self.tmp, "data")
        os.makedirs(os.path.join(self.root, "d", "sub"))
        os.makedirs(os.path.join(self.root, "d", "train2"))
        os.makedirs(os.path.join(self.tmp, "outside"))
        self.small = os.urandom(1000)
        self.medium = os.urandom(300_000)
        self.big = os.urandom(20 << 20)  # over the 8 MiB high-water mark
        self.write("small.bin", self.small)
        self.write("medium.bin", self.medium)
        self.write("big.bin", self.big)
        for rel in ("d/a.txt", "d/b.bin", "d/sub/c.txt", "d/train1", "d/train2/x"):
            self.write(rel, rel.encode())
        with open(os.path.join(self.tmp, "outside", "secret"), "w") as f:
            f.write("secret")
        os.symlink("../outside/secret", os.path.join(self.root, "escape"))
        os.symlink("small.bin", os.path.join(self.root, "inside-link"))
        self.srv = Server(binary, "--allow", "file://" + self.root, "--allow",
                          "direct://" + self.root, "--max-frame", "65536", "--threads", "2",
                          "--log-level", "info")

    def write(self, rel, data):
        with open(os.path.join(self.root, rel), "wb") as f:
            f.write(data)

    def uri(self, rel, scheme="file"):
        return "%s://%s/%s" % (scheme, self.root, rel)

    def get(self, c, rid, rel, off=0, length=None, scheme="file"):
        c.send([GET, rid, self.uri(rel, scheme), off, length])
        return c.collect([rid])[0][rid]

    # -- GET --
    def test_welcome(self):
        c = self.srv.conn()
        w = c.welcome
        assert w[2] == 1 and w[3] == 65536 and w[4] == 256, w
        assert w[5].startswith("s3dliod/"), w

    def test_get(self):
        c = self.srv.conn()
        r = self.get(c, 1, "medium.bin")
        assert r[0][2] == r[0][3] == len(self.medium) and r[0][5], r[0]
        assert r[0][4] == os.stat(os.path.join(self.root, "medium.bin")).st_mtime_ns
        assert body(r) == self.medium
        assert len(r) == 2 + (len(self.medium) + 65535) // 65536  # max_frame-sized DATA
        assert body(self.get(c, 2, "medium.bin", 1000, 5000)) == self.medium[1000:6000]
        assert body(self.get(c, 3, "medium.bin", 299_000, 10_000)) == self.medium[299_000:]
        r = self.get(c, 4, "medium.bin", len(self.medium))
        assert r[0][2] == 0 and r[1] == [END, 4, 0, 0], r
        error_of(self.get(c, 5, "medium.bin", len(self.medium) + 1), "RANGE", "medium.bin")
        assert body(self.get(c, 6, "inside-link")) == self.small
        r = self.get(c, 7, "small.bin", 0, 0)
        assert r[0][2] == 0 and r[0][3] == len(self.small) and r[1][0] == END

    def test_get_big_and_interleave(self):
        c = self.srv.conn()
        c.send([GET, 10, self.uri("big.bin"), 0, None], [GET, 11, self.uri("small.bin"), 0, None])
        out, order = c.collect([10, 11])
        assert order == [11, 10], "the small GET waited behind the big one: %r" % order
        assert body(out[10]) == self.big
        assert body(out[11]) == self.small

    def test_direct(self):
        c = self.srv.conn()
        assert body(self.get(c, 1, "medium.bin", scheme="direct")) == self.medium
        assert body(self.get(c, 2, "medium.bin", 4097, 70000, "direct")) == self.medium[4097:74097]
        assert body(self.get(c, 3, "small.bin", 999, None, "direct")) == self.small[999:]

    def test_cancel(self):
        c = self.srv.conn()
        c.send([GET, 20, self.uri("big.bin"), 0, None], [CANCEL, 20], [CANCEL, 999])
        out, _ = c.collect([20])
        got = sum(len(f[3]) for f in out[20] if f[0] == DATA)
        assert got < len(self.big)
        error_of(out[20], "CANCELLED", "big.bin")
        assert body(self.get(c, 20, "small.bin")) == self.small  # the id is free again

    def test_duplicate_id(self):
        c = self.srv.conn()
        c.send([GET, 30, self.uri("big.bin"), 0, None], [STAT, 30, self.uri("small.bin")])
        f = c.frame()
        while f[0] != ERROR:
            f = c.frame()
        assert f[1] == 30 and f[2] == E["PROTOCOL"] and "duplicate" in f[3], f
        out, _ = c.collect([30])
        assert out[30][-1][0] == END  # the first request still completes

    # -- STAT, LIST --
    def test_stat(self):
        c = self.srv.conn()
        c.send([STAT, 1, self.uri("medium.bin")])
        r = c.collect([1])[0][1]
        st = os.stat(os.path.join(self.root, "medium.bin"))
        assert r[0][:5] == [HEADER, 1, len(self.medium), len(self.medium), st.st_mtime_ns], r[0]
        assert r[1] == [END, 1, 0, 0], r
        c.send([STAT, 2, self.uri("nope.bin")])
        error_of(c.collect([2])[0][2], "NOT_FOUND",
                 self.uri("nope.bin") + ": No such file or directory")
        c.send([STAT, 3, self.uri("d")])
        error_of(c.collect([3])[0][3], "INVALID", "is a directory")

    def list(self, c, rid, rel, flags=0):
        c.send([LIST, rid, self.uri(rel), flags])
        r = c.collect([rid])[0][rid]
        assert r[-1][0] == END, r[-1]
        entries = [f for f in r if f[0] == ENTRY]
        assert r[-1][2] == len(entries)
        return [(f[2][len(self.uri("")):], f[5]) for f in entries], entries

    def test_list(self):
        c = self.srv.conn()
        got, raw = self.list(c, 1, "d/")
        assert got == [("d/a.txt", False), ("d/b.bin", False), ("d/sub/", True),
                       ("d/train1", False), ("d/train2/", True)], got
        assert raw[0][3] == len("d/a.txt") and raw[0][4] > 0, raw[0]
        got, _ = self.list(c, 2, "d/tr")
        assert got == [("d/train1", False), ("d/train2/", True)], got
        got, _ = self.list(c, 3, "d/", RECURSIVE)
        assert got == [("d/a.txt", False), ("d/b.bin", False), ("d/sub/c.txt", False),
                       ("d/train1", False), ("d/train2/x", False)], got
        got, _ = self.list(c, 4, "no-such-dir/")
        assert got == []
        got, _ = self.list(c, 5, "")  # the root: links count as their (confined) targets
        names = [g[0] for g in got]
        assert "inside-link" in names and "escape" not in names, names

    # -- PUT, DELETE --
    def put(self, c, rid, rel, data, frame=65536, crc=None, size=None, end_size=None):
        msg = [pack([PUT, rid, self.uri(rel), len(data) if size is None else size])]
        for off in range(0, len(data), frame):
            msg.append(data_frame(rid, off, data[off:off + frame]))
        msg.append(pack([END, rid, len(data) if end_size is None else end_size,
                         crc32c(data) if crc is None else crc]))
        c.raw(b"".join(msg))
        return c.collect([rid])[0][rid]

    def leftovers(self, d):
        return [n for n in os.listdir(d) if ".s3dlio-" in n]

    def test_put_delete(self):
        c = self.srv.conn()
        data = os.urandom(200_000)
        r = self.put(c, 1, "up/new/obj.bin", data)
        assert r == [[END, 1, len(data), crc32c(data)]], r
        with open(os.path.join(self.root, "up/new/obj.bin"), "rb") as f:
            assert f.read() == data
        assert body(self.get(c, 2, "up/new/obj.bin")) == data
        r = self.put(c, 3, "up/new/obj.bin", b"")  # empty overwrite
        assert r == [[END, 3, 0, 0]], r
        assert os.path.getsize(os.path.join(self.root, "up/new/obj.bin")) == 0
        # bad CRC: refused, target untouched, temp removed
        r = self.put(c, 4, "up/new/obj.bin", data, crc=crc32c(data) ^ 1)
        error_of(r, "CHECKSUM", "obj.bin", "CRC32C")
        assert os.path.getsize(os.path.join(self.root, "up/new/obj.bin")) == 0
        # short upload
        r = self.put(c, 5, "up/short.bin", data[:1000], size=2000)
        error_of(r, "CHECKSUM", "short.bin")
        assert not os.path.exists(os.path.join(self.root, "up/short.bin"))
        # longer than announced: ERROR as soon as known, the rest is swallowed
        r = self.put(c, 6, "up/long.bin", data, size=100_000)
        assert len(r) == 1
        error_of(r, "INVALID", "exceeds")
        assert not os.path.exists(os.path.join(self.root, "up/long.bin"))
        # refused before it starts: its DATA and END are still swallowed
        c.raw(pack([PUT, 7, "file:///etc/s3dlio-smoke", 10]) + data_frame(7, 0, b"0123456789")
              + pack([END, 7, 10, crc32c(b"0123456789")]))
        error_of(c.collect([7])[0][7], "PERMISSION", "file:///etc/s3dlio-smoke",
                 "not under any --allow prefix")
        # a link out of the root is replaced, never written through
        os.symlink("../../outside/secret", os.path.join(self.root, "up/link"))
        r = self.put(c, 8, "up/link", b"x")
        assert r == [[END, 8, 1, crc32c(b"x")]], r
        assert not os.path.islink(os.path.join(self.root, "up/link"))
        with open(os.path.join(self.tmp, "outside", "secret")) as f:
            assert f.read() == "secret"
        r = self.put(c, 9, "d/sub", b"x")
        error_of(r, "INVALID", "is a directory")
        assert self.leftovers(os.path.join(self.root, "up")) == []
        assert self.leftovers(os.path.join(self.root, "up/new")) == []
        # the stream is still in sync
        assert body(self.get(c, 10, "small.bin")) == self.small
        # DELETE
        c.send([DELETE, 11, self.uri("up/new/obj.bin")])
        assert c.collect([11])[0][11] == [[END, 11, 0, 0]]
        assert not os.path.exists(os.path.join(self.root, "up/new/obj.bin"))
        c.send([DELETE, 12, self.uri("up/new/obj.bin")])
        error_of(c.collect([12])[0][12], "NOT_FOUND", "obj.bin")
        c.send([DELETE, 13, self.uri("d/sub")])
        error_of(c.collect([13])[0][13], "INVALID", "is a directory")

    def test_put_then_disconnect(self):
        c = self.srv.conn()
        c.raw(pack([PUT, 1, self.uri("up/lost.bin"), 1000]) + data_frame(1, 0, b"x" * 500))
        time.sleep(0.2)
        c.close()
        time.sleep(0.3)
        assert not os.path.exists(os.path.join(self.root, "up/lost.bin"))
        assert self.leftovers(os.path.join(self.root, "up")) == []

    # -- errors --
    def test_errors(self):
        c = self.srv.conn()
        error_of(self.get(c, 1, "nope.bin"), "NOT_FOUND",
                 self.uri("nope.bin") + ": No such file or directory")
        c.send([GET, 2, "file:///etc/passwd", 0, None])
        error_of(c.collect([2])[0][2], "PERMISSION",
                 "file:///etc/passwd: not under any --allow prefix")
        c.send([GET, 3, self.uri("d/../small.bin"), 0, None])
        error_of(c.collect([3])[0][3], "INVALID", "path contains '..'")
        c.send([GET, 4, "s3://b/k", 0, None])
        error_of(c.collect([4])[0][4], "UNSUPPORTED",
                 "s3://b/k: the s3 backend is not available in this server")
        error_of(self.get(c, 5, "escape"), "PERMISSION", "escapes the allowed root")
        error_of(self.get(c, 6, "d"), "INVALID", "is a directory")
        c.send([GET, 7, "relative/path", 0, None])
        error_of(c.collect([7])[0][7], "INVALID", "no scheme")
        assert body(self.get(c, 8, "small.bin")) == self.small

    def test_hostile(self):
        cases = [
            ("garbage", b"\xc1\xff\x00\x01" * 4),
            ("wrong types", pack([GET, 1, 12345, 0, None])),
            ("unknown type", pack([99, 1, "x"])),
            ("server frame", pack([WELCOME, 0, 1, 1, 1, "x"])),
            ("header over the limit", pack([GET, 1, "x" * 9000, 0, None])),
            ("huge array", b"\xdd\xff\xff\xff\xff"),
            ("payload over max_frame", pack([PUT, 1, self.uri("up/h.bin"), 1 << 20])
             + pack([DATA, 1, 0]) + b"\xc6\x00\x10\x00\x00"),
            ("DATA for nothing", data_frame(42, 0, b"abc")),
            ("second HELLO", pack([HELLO, 0, 1, None, "again"])),
        ]
        for name, payload in cases:
            c = self.srv.conn()
            c.raw(payload)
            f = c.frame()
            assert f[0] == ERROR and f[1] == 0 and f[2] == E["PROTOCOL"], (name, f)
            c.expect_eof()
            ok = self.srv.conn()  # everyone else is still served
            assert body(self.get(ok, 1, "small.bin")) == self.small, name
        # before HELLO, and a version we do not speak
        c = self.srv.conn(hello=False)
        c.send([GET, 1, self.uri("small.bin"), 0, None])
        f = c.frame()
        assert f[:3] == [ERROR, 0, E["PROTOCOL"]] and "HELLO" in f[3], f
        c.expect_eof()
        c = self.srv.conn(hello=False)
        c.send([HELLO, 0, 2, None, "future"])
        f = c.frame()
        assert f[:3] == [ERROR, 0, E["PROTOCOL"]] and "version" in f[3], f
        c.expect_eof()
        assert self.srv.alive()

    def test_shrinking_file(self):
        # 40 MiB cut to 30 MiB right after HEADER: what the server queued ahead (the high-water
        # mark plus socket buffers) stays readable, and the pread of a later chunk sees the
        # file shorter than announced
        path = os.path.join(self.root, "shrink.bin")
        with open(path, "wb") as f:
            f.write(self.big * 2)
        c = self.srv.conn()
        c.send([GET, 1, self.uri("shrink.bin"), 0, None])
        f = c.frame()
        assert f[0] == HEADER and f[2] == 2 * len(self.big)
        os.truncate(path, 30 << 20)
        while f[0] not in (END, ERROR):
            f = c.frame()
        assert f[0] == ERROR and f[2] == E["IO"] and "file shrank during read" in f[3], f[:4]
        assert body(self.get(c, 2, "small.bin")) == self.small  # the connection lives on
        os.unlink(path)

    # -- a second server for limits, timeouts, Unix sockets, draining --
    def test_limits_and_unix(self):
        sock = os.path.join(self.tmp, "s.sock")
        srv = Server(self.binary, "--allow", "file://" + self.root, "--max-in-flight", "2",
                     "--idle-timeout", "1", "--threads", "1", listen="unix://" + sock)
        try:
            assert srv.addr == sock
            c = srv.conn()
            assert c.welcome[4] == 2
            c.send(*[[GET, i, self.uri("big.bin"), 0, None] for i in range(1, 5)])
            out, _ = c.collect([1, 2, 3, 4])
            busy = [i for i in out if out[i][-1][0] == ERROR]
            assert busy == [3, 4], busy
            for i in busy:
                assert out[i][-1][4] > 0 and out[i][-1][2] == E["BUSY"], out[i][-1]
            for i in (1, 2):
                assert body(out[i]) == self.big
            idle = srv.conn()
            time.sleep(2.5)
            idle.expect_eof()  # idle timeout
            # SIGTERM: in-flight requests finish, new ones get SHUTDOWN
            c = srv.conn()
            c.send([GET, 1, self.uri("big.bin"), 0, None])
            f = c.frame()
            assert f[0] == HEADER
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            c.send([STAT, 2, self.uri("small.bin")])
            frames = [f]
            out = {1: frames, 2: []}
            while not (out[1][-1][0] in (END, ERROR) and out[2]):
                f = c.frame()
                out[f[1]].append(f)
            error_of(out[2], "SHUTDOWN")
            assert body(out[1]) == self.big
            c.expect_eof()
            assert srv.stop(timeout=10) == 0
            assert not os.path.exists(sock), "unix socket file left behind"
            assert any("stopped" in line for line in srv.lines), srv.lines
        finally:
            if srv.alive():
                srv.proc.kill()

    def test_parent_pid(self):
        parent = subprocess.Popen(["sleep", "30"])
        srv = Server(self.binary, "--parent-pid", str(parent.pid))
        try:
            assert any("no --allow" in line for line in srv.lines) or True
            c = srv.conn()
            c.send([GET, 1, "file:///etc/hostname", 0, None])
            error_of(c.collect([1])[0][1], "PERMISSION")  # no --allow: everything refused
            c.close()
            parent.kill()
            parent.wait()
            assert srv.proc.wait(5) == 0
        finally:
            if srv.alive():
                srv.proc.kill()

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.srv.proc.pid))

    def run(self):
        fds_before = self.open_fds()
        tests = [n for n in dir(self) if n.startswith("test_")]
        only = os.environ.get("WIRE_SMOKE_ONLY")
        failed = 0
        for name in sorted(tests):
            if only and only not in name:
                continue
            t0 = time.time()
            try:
                getattr(self, name)()
                print("ok   %-28s %.2fs" % (name, time.time() - t0))
            except Exception as exc:  # report every failing check, not only the first
                failed += 1
                print("FAIL %-28s %s: %s" % (name, type(exc).__name__, exc))
        # every connection, file and upload of the checks above is closed by now
        deadline = time.time() + 5
        while self.open_fds() > fds_before and time.time() < deadline:
            time.sleep(0.1)
        if self.open_fds() > fds_before:
            print("FAIL descriptors leaked: %d open, %d at start" % (self.open_fds(), fds_before))
            failed += 1
        rc = self.srv.stop()
        if rc != 0:
            print("FAIL server exit status %d" % rc)
            failed += 1
        errors = [line for line in self.srv.lines if "AddressSanitizer" in line
                  or "runtime error" in line]
        if errors:
            print("FAIL sanitizer reports:\n" + "".join(errors))
            failed += 1
        shutil.rmtree(self.tmp, ignore_errors=True)
        return failed


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    binary = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("S3DLIOD")
              or os.path.join(here, "..", "..", "build", "bin", "s3dliod"))
    failed = Smoke(binary).run()
    print("%d failed" % failed if failed else "all passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
