"""File formats: reading .npz objects (read_npz), the TFRecord index functions (the NVIDIA
DALI "{offset} {size}" text index), and the objects put() generates in the original's object
types: NPZ (a zip holding data.npy), TFRecord (one record, CRC32C-framed), HDF5 (one uint8
dataset "data") and raw bytes.

Every format is written here without a library: one buffer is allocated at the object's
final size, its payload filled in place by the caller's generator, then the headers are
written around it (no copy of the payload). read_npz and the index functions work on the
BytesView the server returns, without copying the object first.
"""

import io
import os
import re
import struct
import zlib

from . import _core
from ._server import client as _client

__all__ = ["read_npz", "create_tfrecord_index", "index_tfrecord_bytes",
           "get_tfrecord_index_entries", "read_tfrecord_index"]


def _has_scheme(path):
    return isinstance(path, str) and "://" in path


def _buffer(data, what):
    """data as a 1-D memoryview of bytes (any contiguous buffer; str refused)."""
    if isinstance(data, str):
        raise TypeError("%s must be bytes-like, not str" % what)
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError("%s must be bytes-like (bytes, bytearray, memoryview, BytesView, numpy "
                        "array), not %s" % (what, type(data).__name__)) from None
    if not mv.c_contiguous:
        raise _core.InvalidArgumentError("%s must be a contiguous buffer" % what)
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


def _local_error(e, what, path):
    """An OSError on a local file as the package's error classes (RuntimeError family)."""
    msg = "%s %s: %s" % (what, path, e.strerror or e)
    if isinstance(e, FileNotFoundError):
        return _core.NotFoundError(msg)
    if isinstance(e, PermissionError):
        return _core.PermissionDeniedError(msg)
    return _core.Error(msg)


# ---- TFRecord index (DALI format) ----
#
# A record: length (u64 LE), masked CRC32C of the length (u32), data, masked CRC32C of the
# data (u32). An index entry is (offset of the record, size of the whole record = length+16).
# As the original, the CRCs are not checked (DALI's own test files carry dummy CRCs).

_U64 = struct.Struct("<Q")


def _tfrecord_scan(n, header_at):
    """The (offset, size) of every record of n bytes whose 12-byte record headers
    header_at(pos) gives (fewer bytes at the end)."""
    entries = []
    pos = 0
    while pos < n:
        head = header_at(pos)
        if len(head) < 12:
            raise _core.InvalidArgumentError(
                "Truncated TFRecord at offset %d: a record header needs 12 bytes, only %d "
                "remaining" % (pos, len(head)))
        (length,) = _U64.unpack_from(head, 0)
        end = pos + 16 + length
        if end > n:
            raise _core.InvalidArgumentError(
                "Truncated TFRecord at offset %d: the record's data and CRC need %d bytes, "
                "only %d remain" % (pos, length + 4, n - pos - 12))
        entries.append((pos, end - pos))
        pos = end
    return entries


def _tfrecord_entries(mv):
    return _tfrecord_scan(len(mv), lambda pos: mv[pos:pos + 12])


def _index_text(entries):
    return "".join("%d %d\n" % e for e in entries)


def get_tfrecord_index_entries(tfrecord_bytes):
    """[(offset, size)] of every record in the TFRecord data (any bytes-like object). A
    truncated record raises InvalidArgumentError (a ValueError and RuntimeError)."""
    return _tfrecord_entries(_buffer(tfrecord_bytes, "tfrecord_bytes"))


def index_tfrecord_bytes(tfrecord_bytes):
    """The DALI index text of the TFRecord data: one "{offset} {size}\\n" line per record."""
    return _index_text(get_tfrecord_index_entries(tfrecord_bytes))


def _local_tfrecord_entries(path):
    """The index entries of a local TFRecord file, read header by header (12 bytes a record,
    then past its data): no copy of the file, and nothing mapped, so a file another program
    truncates meanwhile is a clean error, not a SIGBUS."""
    try:
        f = open(path, "rb", buffering=0)
    except OSError as e:
        raise _local_error(e, "Failed to open TFRecord file", path) from None
    with f:
        fd = f.fileno()
        try:
            return _tfrecord_scan(os.fstat(fd).st_size, lambda pos: os.pread(fd, 12, pos))
        except OSError as e:
            raise _local_error(e, "Failed to read TFRecord file", path) from None


def _write_local(path, data):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _local_error(e, "Failed to write index file", path) from None


def create_tfrecord_index(tfrecord_path, index_path=None):
    """Writes the DALI index of the TFRecord at tfrecord_path to index_path (None:
    tfrecord_path + ".idx"); returns the number of records. Each path is a local file path
    (as the original) or a URI of any scheme (read with get, written with put_bytes). A
    truncated TFRecord raises and writes no index."""
    if isinstance(tfrecord_path, os.PathLike):
        tfrecord_path = os.fspath(tfrecord_path)
    if not isinstance(tfrecord_path, str):
        raise TypeError("tfrecord_path must be a str, not %s" % type(tfrecord_path).__name__)
    if index_path is None:
        index_path = tfrecord_path + ".idx"
    elif isinstance(index_path, os.PathLike):
        index_path = os.fspath(index_path)
    if not isinstance(index_path, str):
        raise TypeError("index_path must be a str or None, not %s" % type(index_path).__name__)
    if _has_scheme(tfrecord_path):
        entries = _tfrecord_entries(memoryview(_client().get(tfrecord_path)))
    else:
        entries = _local_tfrecord_entries(tfrecord_path)
    text = _index_text(entries).encode("ascii")
    if _has_scheme(index_path):
        _client().put_bytes(index_path, text)
    else:
        _write_local(index_path, text)
    return len(entries)


_INDEX_NUM = re.compile(r"\+?[0-9]+")


def read_tfrecord_index(index_path):
    """[(offset, size)] from a DALI index file (a local path or a URI). Blank lines are
    skipped; a malformed line raises InvalidArgumentError naming its line number."""
    if isinstance(index_path, os.PathLike):
        index_path = os.fspath(index_path)
    if not isinstance(index_path, str):
        raise TypeError("index_path must be a str, not %s" % type(index_path).__name__)
    if _has_scheme(index_path):
        raw = _client().get(index_path).to_bytes()
    else:
        try:
            with open(index_path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise _local_error(e, "Failed to open index file", index_path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _core.InvalidArgumentError("index file %s is not text: %s" % (index_path, e))
    entries = []
    for num, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise _core.InvalidArgumentError(
                "Invalid format at line %d: expected 'offset size', got '%s'"
                % (num, line.strip()))
        for what, p in zip(("offset", "size"), parts):
            if not _INDEX_NUM.fullmatch(p) or int(p) >= 1 << 64:
                raise _core.InvalidArgumentError("Invalid %s at line %d: %r" % (what, num, p))
        entries.append((int(parts[0]), int(parts[1])))
    return entries


# ---- NPZ ----

class _MemReader(io.RawIOBase):
    """A seekable read-only file over a memoryview (zipfile reads the archive through it)."""

    def __init__(self, mv):
        super().__init__()
        self._mv = mv
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b):
        chunk = self._mv[self._pos:self._pos + len(b)]
        n = len(chunk)
        memoryview(b).cast("B")[:n] = chunk
        self._pos += n
        return n


def _npy_array(np, mv, where):
    """A writable copy of the .npy array in mv (pickled object arrays refused)."""
    fp = _MemReader(mv)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs by a UTF-8 header only
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError("unsupported .npy format version %d.%d" % version)
    except (ValueError, TypeError, SyntaxError, OverflowError) as e:
        # numpy's header parser (a literal_eval of the header dict) on crafted bytes
        raise _core.InvalidArgumentError("%s: not a .npy array: %s" % (where, e)) from None
    if dtype.hasobject:
        raise _core.InvalidArgumentError("%s: an object array (pickled data) is not read"
                                         % where)
    count = 1
    for d in shape:
        if d < 0:
            raise _core.InvalidArgumentError("%s: negative dimension in shape %r"
                                             % (where, shape))
        count *= d
    start = fp.tell()
    if len(mv) - start < count * dtype.itemsize:
        raise _core.InvalidArgumentError("%s: truncated array data (%d bytes for %d)"
                                         % (where, len(mv) - start, count * dtype.itemsize))
    arr = np.frombuffer(mv, dtype=dtype, count=count, offset=start).copy()
    if fortran:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def _stored_member(mv, info):
    """The bytes of a stored (uncompressed) zip member, sliced from mv (no copy). Every
    offset the archive gives is checked against its size first (crafted archives)."""
    off = info.header_offset
    if off < 0 or off + 30 > len(mv):
        raise _core.InvalidArgumentError(
            "the local header of %s (30 bytes at offset %d) is not inside the archive "
            "(%d bytes)" % (info.filename, off, len(mv)))
    if mv[off:off + 4] != b"PK\x03\x04":
        raise _core.InvalidArgumentError("bad local header for %s" % info.filename)
    name_len, extra_len = struct.unpack_from("<HH", mv, off + 26)
    start = off + 30 + name_len + extra_len
    if start + info.file_size > len(mv):
        raise _core.InvalidArgumentError(
            "the data of %s (%d bytes at offset %d) runs past the end of the archive (%d "
            "bytes)" % (info.filename, info.file_size, start, len(mv)))
    data = mv[start:start + info.file_size]
    if zlib.crc32(data) != info.CRC:
        raise _core.InvalidArgumentError("bad CRC-32 for %s" % info.filename)
    return data


def _malformed():
    """What zipfile, struct and zlib raise on malformed archives (beyond BadZipFile)."""
    import zipfile
    return (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, zlib.error, ValueError,
            IndexError, KeyError, EOFError, OverflowError, OSError, NotImplementedError)


def read_npz(uri, array_name=None):
    """The array array_name of the .npz object at uri (any scheme), as a numpy array with its
    stored dtype and shape (the original converts only float32). array_name: with or without
    ".npy"; None: the archive's last array, as the original picks it. A plain .npy object is
    read too."""
    import zipfile

    import numpy as np

    if not isinstance(uri, str):
        raise TypeError("uri must be a str, not %s" % type(uri).__name__)
    if array_name is not None and not isinstance(array_name, str):
        raise TypeError("array_name must be a str or None, not %s" % type(array_name).__name__)
    mv = memoryview(_client().get(uri))
    try:
        if mv[:6] == b"\x93NUMPY":
            return _npy_array(np, mv, uri)
        return _npz_array(np, zipfile, mv, uri, array_name)
    except _core.Error:
        raise
    except _malformed() as e:
        # anything else a crafted archive makes the parsers raise: the package's error
        raise _core.InvalidArgumentError("%s: malformed .npz archive: %s: %s"
                                         % (uri, type(e).__name__, e)) from None


def _npz_array(np, zipfile, mv, uri, array_name):
    """array_name (None: the last) of the .npz archive in mv."""
    try:
        zf = zipfile.ZipFile(_MemReader(mv))
    except _malformed() as e:
        raise _core.InvalidArgumentError("%s is not an .npz archive: %s" % (uri, e)) from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if not infos:
            raise _core.InvalidArgumentError("NPZ file is empty: %s" % uri)
        if array_name is None:
            info = infos[-1]
        else:
            byname = {i.filename: i for i in infos}
            info = byname.get(array_name) or byname.get(array_name + ".npy")
            if info is None:
                names = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename
                         for i in infos]
                raise _core.InvalidArgumentError("no array %r in %s (it holds %s)"
                                                 % (array_name, uri, names))
        where = "%s[%s]" % (uri, info.filename)
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                member = _stored_member(mv, info)
            else:
                member = memoryview(zf.read(info))  # deflated (np.savez_compressed)
        except _core.InvalidArgumentError as e:
            raise _core.InvalidArgumentError("%s: %s" % (where, e)) from None
        except _malformed() as e:
            raise _core.InvalidArgumentError("%s: %s: %s" % (where, type(e).__name__, e)) \
                from None
        return _npy_array(np, member, where)


# ---- generated objects (put's object types) ----

def object_kind(object_type):
    """put()'s object_type as the original reads it: NPZ, TFRECORD, HDF5 (any case), and
    anything else raw."""
    return {"NPZ": "npz", "TFRECORD": "tfrecord", "HDF5": "hdf5"}.get(object_type.upper(),
                                                                       "raw")


def build_object(kind, size, fill):
    """An object of the kind holding size bytes of data, as a uint8 numpy array; fill(buffer)
    writes the data into the payload's place."""
    import numpy as np

    build = {"raw": _raw, "npz": _npz, "tfrecord": _tfrecord, "hdf5": _hdf5}[kind]
    return build(np, size, fill)


def _raw(np, size, fill):
    arr = np.empty(size, dtype=np.uint8)
    fill(arr)
    return arr


def _masked_crc32c(data):
    crc = _core.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(np, size, fill):
    """One TFRecord record of size bytes with valid masked CRC32C fields (TensorFlow checks
    them; the original wrote CRC-32/IEEE values)."""
    arr = np.empty(size + 16, dtype=np.uint8)
    payload = arr[12:12 + size]
    fill(payload)
    head = _U64.pack(size)
    arr[:8] = np.frombuffer(head, dtype=np.uint8)
    struct.pack_into("<I", arr, 8, _masked_crc32c(head))
    struct.pack_into("<I", arr, 12 + size, _masked_crc32c(payload))
    return arr


# NPZ: a zip with one stored member "data.npy" (uint8, shape (size,)), as np.savez writes;
# zip64 records when a size or offset needs them (objects of 4 GiB and more).
_NPZ_MEMBER = b"data.npy"
_ZIP_MAX = 0xFFFFFFFF
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, a fixed time: reproducible archives


def _npy_header(shape_len):
    d = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % shape_len
    total = 10 + len(d) + 1
    pad = (-total) % 64  # numpy aligns the data to 64 bytes
    body = (d + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _npz(np, size, fill, force_zip64=False):
    hdr = _npy_header(size)
    msize = len(hdr) + size
    # zip64 when the member or the central directory's offset passes 4 GiB (counted with
    # the 20-byte extra field, so adding it cannot push the offset over)
    zip64 = force_zip64 or 30 + len(_NPZ_MEMBER) + 20 + msize >= _ZIP_MAX
    extra = struct.pack("<HHQQ", 1, 16, msize, msize) if zip64 else b""
    lh_len = 30 + len(_NPZ_MEMBER) + len(extra)
    cd_off = lh_len + msize
    cd_len = 46 + len(_NPZ_MEMBER) + len(extra)
    tail_len = cd_len + (56 + 20 if zip64 else 0) + 22
    arr = np.empty(cd_off + tail_len, dtype=np.uint8)
    data_off = lh_len
    arr[data_off:data_off + len(hdr)] = np.frombuffer(hdr, dtype=np.uint8)
    fill(arr[data_off + len(hdr):data_off + msize])
    crc = zlib.crc32(arr[data_off:data_off + msize])
    version = 45 if zip64 else 20
    small = _ZIP_MAX if zip64 else msize
    struct.pack_into("<IHHHHHIIIHH", arr, 0, 0x04034B50, version, 0, 0, 0, _DOS_DATE, crc,
                     small, small, len(_NPZ_MEMBER), len(extra))
    arr[30:30 + len(_NPZ_MEMBER)] = np.frombuffer(_NPZ_MEMBER, dtype=np.uint8)
    if extra:
        arr[30 + len(_NPZ_MEMBER):lh_len] = np.frombuffer(extra, dtype=np.uint8)
    pos = cd_off
    struct.pack_into("<IHHHHHHIIIHHHHHII", arr, pos, 0x02014B50, (3 << 8) | version, version,
                     0, 0, 0, _DOS_DATE, crc, small, small, len(_NPZ_MEMBER), len(extra),
                     0, 0, 0, 0o100644 << 16, 0)
    pos += 46
    arr[pos:pos + len(_NPZ_MEMBER)] = np.frombuffer(_NPZ_MEMBER, dtype=np.uint8)
    pos += len(_NPZ_MEMBER)
    if extra:
        arr[pos:pos + len(extra)] = np.frombuffer(extra, dtype=np.uint8)
        pos += len(extra)
    if zip64:
        eocd64 = pos
        struct.pack_into("<IQHHIIQQQQ", arr, pos, 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0,
                         1, 1, cd_len, cd_off)
        pos += 56
        struct.pack_into("<IIQI", arr, pos, 0x07064B50, 0, eocd64, 1)
        pos += 20
    struct.pack_into("<IHHHHIIH", arr, pos, 0x06054B50, 0, 0, 1, 1, cd_len,
                     _ZIP_MAX if zip64 else cd_off, 0)
    return arr


# HDF5: superblock version 2 and version-2 object headers (HDF5 1.8 and later read them):
# the root group holds one hard link "data" to a contiguous uint8 dataset of size elements.
# Every metadata block ends with a Jenkins lookup3 checksum, as the format requires.

_UNDEF = 0xFFFFFFFFFFFFFFFF


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data, initval=0):
    """Bob Jenkins' lookup3 hashlittle(), the checksum of HDF5 metadata."""
    m = 0xFFFFFFFF
    data = bytes(data)
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & m
    i = 0
    while length - i > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
        a = ((a - c) & m) ^ _rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ _rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 4)
        b = (b + a) & m
        i += 12
    if length == i:
        return c
    x, y, z = struct.unpack("<III", data[i:] + bytes(12 - (length - i)))
    a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
    c ^= b
    c = (c - _rot(b, 14)) & m
    a ^= c
    a = (a - _rot(c, 11)) & m
    b ^= a
    b = (b - _rot(a, 25)) & m
    c ^= b
    c = (c - _rot(b, 16)) & m
    a ^= c
    a = (a - _rot(c, 4)) & m
    b ^= a
    b = (b - _rot(a, 14)) & m
    c ^= b
    c = (c - _rot(b, 24)) & m
    return c


def _ohdr(messages):
    """A version-2 object header: (type, flags, data) messages, a 4-byte chunk size, and
    the checksum."""
    body = b"".join(struct.pack("<BHB", t, len(d), f) + d for t, f, d in messages)
    img = b"OHDR" + bytes([2, 0x02]) + struct.pack("<I", len(body)) + body
    return img + struct.pack("<I", lookup3(img))


def _hdf5(np, size, fill):
    root_addr = 48
    link = lambda addr: bytes([1, 0, 4]) + b"data" + struct.pack("<Q", addr)  # noqa: E731
    root = lambda addr: _ohdr([  # noqa: E731
        (0x02, 0, struct.pack("<BBQQ", 0, 0, _UNDEF, _UNDEF)),  # link info: compact links
        (0x0A, 0, bytes([0, 0])),                                # group info: defaults
        (0x06, 0, link(addr)),                                   # the hard link "data"
    ])
    dset_addr = root_addr + len(root(0))
    dset = lambda addr: _ohdr([  # noqa: E731
        (0x01, 0, struct.pack("<BBBBQ", 2, 1, 0, 1, size)),      # dataspace: simple, [size]
        (0x03, 1, bytes([0x10, 0, 0, 0]) + struct.pack("<IHH", 1, 0, 8)),  # uint8, LE
        (0x05, 1, bytes([3, 0x0A])),                             # fill: late, if set
        (0x08, 0, struct.pack("<BBQQ", 3, 1, addr, size)),       # layout: contiguous
    ])
    data_addr = dset_addr + len(dset(0))
    eof = data_addr + size
    sb = b"\x89HDF\r\n\x1a\n" + bytes([2, 8, 8, 0]) + struct.pack(
        "<QQQQ", 0, _UNDEF, eof, root_addr)
    sb += struct.pack("<I", lookup3(sb))
    meta = sb + root(dset_addr) + dset(data_addr if size else _UNDEF)
    arr = np.empty(eof, dtype=np.uint8)
    arr[:len(meta)] = np.frombuffer(meta, dtype=np.uint8)
    fill(arr[data_addr:])
    return arr
