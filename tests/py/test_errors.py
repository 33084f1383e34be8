"""Errors: each cause maps to its exception (pyext/API.md) and the message names the URI;
the server confines file:// to its --allow roots (no '..', no symlink escape)."""
import os
import socket

import pytest

import s3dtest
from s3dtest import file_uri


def test_error_class_hierarchy(s3dlio_mod):
    assert issubclass(s3dlio_mod.Error, RuntimeError)
    assert not issubclass(s3dlio_mod.Error, (OSError, ValueError))


# ---- not found ----
# (delete of a missing object succeeds, as in the original: test_compat_core.py)
@pytest.mark.parametrize("call", ["get", "get_range", "get_into", "stat", "get_many"])
def test_missing_object_file_not_found_names_uri(s3, data, call):
    uri = data.uri("sizes/does-not-exist.bin")
    with pytest.raises(FileNotFoundError) as ei:
        if call == "get":
            s3.get(uri)
        elif call == "get_range":
            s3.get_range(uri, 0, 10)
        elif call == "get_into":
            s3.get_into(uri, bytearray(10))
        elif call == "stat":
            s3.stat(uri)
        else:
            s3.get_many([uri], max_in_flight=1)
    assert uri in str(ei.value)


def test_missing_directory_component(s3, data):
    uri = data.uri("no/such/dir/x.bin")
    with pytest.raises(FileNotFoundError) as ei:
        s3.get(uri)
    assert uri in str(ei.value)


# ---- outside --allow ----
def test_outside_allow_permission_error(s3, data):
    uri = file_uri(data.outside) + "/secret.bin"
    with pytest.raises(PermissionError) as ei:
        s3.get(uri)
    assert uri in str(ei.value)
    assert data.secret not in str(ei.value).encode()


def test_system_file_outside_allow(s3):
    for uri in ("file:///etc/hostname", "file:///etc/passwd", "file:///proc/self/environ"):
        with pytest.raises(PermissionError) as ei:
            s3.get(uri)
        assert uri in str(ei.value)


def test_sibling_whose_name_extends_the_root_is_refused(s3, data):
    """--allow file:///x/data/ must not admit /x/data_evil/ (a string-prefix bug)."""
    uri = file_uri(data.sibling) + "/secret.bin"
    with pytest.raises(PermissionError):
        s3.get(uri)


def test_root_without_trailing_slash_and_parent(s3, data):
    for uri in (file_uri(os.path.dirname(data.root)) + "/", file_uri(data.root) + "_evil/"):
        with pytest.raises(PermissionError):
            s3.list(uri)


@pytest.mark.parametrize("call", ["get_range", "get_into", "stat", "exists", "get_many",
                                  "put_bytes", "delete", "list"])
def test_outside_allow_every_call(s3, data, call):
    uri = file_uri(data.outside) + "/secret.bin"
    with pytest.raises(PermissionError) as ei:
        if call == "get_range":
            s3.get_range(uri, 0, 4)
        elif call == "get_into":
            s3.get_into(uri, bytearray(1000))
        elif call == "stat":
            s3.stat(uri)
        elif call == "exists":
            s3.exists(uri)
        elif call == "get_many":
            s3.get_many([data.uri(data.size_rel(1)), uri], max_in_flight=2)
        elif call == "put_bytes":
            s3.put_bytes(uri, b"overwritten!")
        elif call == "delete":
            s3.delete(uri)
        else:
            s3.list(file_uri(data.outside) + "/")
    assert "secret.bin" in str(ei.value) or call == "list"
    with open(os.path.join(data.outside, "secret.bin"), "rb") as f:
        assert f.read() == data.secret


# ---- '..' ----
def _dotdot_uris(data):
    outside_name = os.path.basename(data.outside)
    return [
        data.uri("..") + "/" + outside_name + "/secret.bin",
        data.uri("sizes/../../" + outside_name + "/secret.bin"),
        data.uri("sizes/../sizes/../../" + outside_name + "/secret.bin"),
        data.uri("..") + "/" + os.path.basename(data.sibling) + "/secret.bin",
        data.uri("../../../../../../../../etc/hostname"),
    ]


@pytest.mark.parametrize("i", range(5))
def test_dotdot_escape_refused(s3, data, i):
    uri = _dotdot_uris(data)[i]
    with pytest.raises((ValueError, PermissionError)) as ei:
        s3.get(uri)
    msg = str(ei.value)
    assert uri in msg or ".." in msg


def test_dotdot_inside_root_is_not_an_escape_but_still_handled(s3, data):
    """sizes/../sizes/x stays inside the root: the server may serve it or refuse '..'
    outright; it must not serve anything but that file."""
    rel = data.size_rel(4096)
    uri = data.uri("sizes/../" + rel)
    try:
        view = s3.get(uri)
    except (ValueError, PermissionError):
        return
    assert bytes(view) == data.bytes(rel)


@pytest.mark.parametrize("enc", ["%2e%2e", "%2E%2E", ".%2e", "%2e."])
def test_percent_encoded_dotdot_does_not_escape(s3, data, enc):
    outside_name = os.path.basename(data.outside)
    uri = data.uri(f"sizes/{enc}/{enc}/{outside_name}/secret.bin")
    with pytest.raises((FileNotFoundError, PermissionError, ValueError)):
        v = s3.get(uri)
        assert data.secret not in bytes(v)


def test_dotdot_put_refused(s3, data):
    outside_name = os.path.basename(data.outside)
    uri = data.uri("../" + outside_name + "/dotdot_put.bin")
    with pytest.raises((ValueError, PermissionError)):
        s3.put_bytes(uri, b"escaped")
    assert not os.path.exists(os.path.join(data.outside, "dotdot_put.bin"))


# ---- symlinks ----
@pytest.mark.parametrize("rel", ["links/etc/hostname", "links/etc/passwd", "links/secret.bin",
                                 "links/relsecret.bin", "links/outdir/secret.bin"])
def test_symlink_escape_refused(s3, data, rel):
    uri = data.uri(rel)
    with pytest.raises(PermissionError) as ei:
        s3.get(uri)
    assert uri in str(ei.value)


def test_symlink_escape_refused_for_stat_and_range(s3, data):
    uri = data.uri("links/secret.bin")
    with pytest.raises(PermissionError):
        s3.stat(uri)
    with pytest.raises(PermissionError):
        s3.get_range(uri, 0, 3)
    with pytest.raises(PermissionError):
        s3.get_into(uri, bytearray(1000))


def test_symlink_dir_escape_refused_for_put_and_delete(s3, data, scratch):
    path, base = scratch
    uri = data.uri("links/outdir/pwned.bin")
    with pytest.raises(PermissionError):
        s3.put_bytes(uri, b"pwned")
    assert not os.path.exists(os.path.join(data.outside, "pwned.bin"))
    with pytest.raises(PermissionError):
        s3.delete(data.uri("links/outdir/secret.bin"))
    # a symlink (inside the root) to an outside file: deleting may refuse or remove the link
    # itself, but never the file it points to
    link = os.path.join(path, "link-to-secret.bin")
    os.symlink(os.path.join(data.outside, "secret.bin"), link)
    try:
        s3.delete(base + "link-to-secret.bin")
    except PermissionError:
        assert os.path.islink(link)
    else:
        assert not os.path.lexists(link)
    with open(os.path.join(data.outside, "secret.bin"), "rb") as f:
        assert f.read() == data.secret


def test_list_does_not_follow_symlinks_outside(s3, data):
    got = s3.list(data.uri("links") + "/", recursive=True)
    assert not any("secret" in u and "outdir" in u for u in got)
    assert not any("/etc/" in u[len(data.uri("")):] for u in got)
    try:
        inner = s3.list(data.uri("links/outdir") + "/", recursive=True)
    except PermissionError:
        return
    assert inner == []


# ---- malformed ----
@pytest.mark.parametrize("uri", ["", "nonsense", "file://relative", "file://relative/x.bin",
                                 "file:relative", "://x", "s3dlio"])
def test_malformed_uri_value_error(s3, uri):
    with pytest.raises(ValueError) as ei:
        s3.get(uri)
    if uri:
        assert uri in str(ei.value)


def test_nul_byte_in_uri(s3, data):
    with pytest.raises(ValueError):
        s3.get(data.uri(data.size_rel(1)) + "\x00/../../etc/passwd")


def test_overlong_uri(s3, data):
    uri = data.uri("x" * 5000)
    with pytest.raises((ValueError, s3.Error)) as ei:
        s3.get(uri)
    assert not isinstance(ei.value, ConnectionError)
    # the pool survives
    assert bytes(s3.get(data.uri(data.size_rel(1)))) == data.bytes(data.size_rel(1))


@pytest.mark.parametrize("bad", [None, 123, 1.5, ["file:///x"]])
def test_non_string_uri_type_error(s3, bad):
    with pytest.raises(TypeError):
        s3.get(bad)


@pytest.mark.parametrize("uri", ["http://example.com/x", "ftp://h/x", "gopher://h/x"])
def test_unsupported_scheme(s3, uri):
    with pytest.raises((ValueError, PermissionError, s3.Error)) as ei:
        s3.get(uri)
    assert not isinstance(ei.value, ConnectionError)
    assert uri in str(ei.value)


# ---- directory GET ----
@pytest.mark.parametrize("rel,slash", [("tree", ""), ("tree", "/"), ("tree/sub1", "/")])
def test_directory_get_is_an_error(s3, data, rel, slash):
    uri = data.uri(rel) + slash
    with pytest.raises((FileNotFoundError, IsADirectoryError, ValueError, s3.Error)) as ei:
        s3.get(uri)
    assert not isinstance(ei.value, ConnectionError)
    assert uri.rstrip("/") in str(ei.value)
    assert bytes(s3.get(data.uri(data.size_rel(1)))) == data.bytes(data.size_rel(1))


def test_errors_do_not_poison_the_pool(s3, data):
    rel = data.size_rel(65537)
    before = s3.stats()
    for i in range(100):
        with pytest.raises(FileNotFoundError):
            s3.get(data.uri(f"sizes/missing-{i}.bin"))
    after = s3.stats()
    assert after["errors"] - before["errors"] >= 100
    assert bytes(s3.get(data.uri(rel))) == data.bytes(rel)


# ---- connection ----
def test_connect_refused_names_address(s3dlio_mod, server):
    port = s3dtest.free_tcp_port()
    url = f"tcp://127.0.0.1:{port}"
    try:
        with pytest.raises(ConnectionError) as ei:
            s3dlio_mod.connect(url)
            s3dlio_mod.get("file:///nothing/there.bin")
        assert f"127.0.0.1:{port}" in str(ei.value)
    finally:
        s3dlio_mod.connect(server.tcp_url)


def test_connect_missing_unix_socket_names_path(s3dlio_mod, server, tmp_path):
    path = str(tmp_path / "no-server.sock")
    try:
        with pytest.raises(ConnectionError) as ei:
            s3dlio_mod.connect("unix://" + path)
            s3dlio_mod.get("file:///nothing/there.bin")
        assert path in str(ei.value)
    finally:
        s3dlio_mod.connect(server.tcp_url)


def test_connect_to_a_non_s3dliod_peer(s3dlio_mod, server):
    """A listener that accepts and closes at once (not an s3dliod) gives ConnectionError or
    s3dlio.Error, not a hang."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    import threading

    stop = threading.Event()

    def acceptor():
        lst.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lst.accept()
                c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                c.close()
            except OSError:
                pass

    t = threading.Thread(target=acceptor, daemon=True)
    t.start()
    try:
        with pytest.raises((ConnectionError, s3dlio_mod.Error)):
            s3dlio_mod.connect(f"tcp://127.0.0.1:{port}")
            s3dlio_mod.get("file:///nothing/there.bin")
    finally:
        stop.set()
        t.join(5)
        lst.close()
        s3dlio_mod.connect(server.tcp_url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:80",
                                 "unix://relative.sock", "nonsense", ""])
def test_connect_malformed_url(s3dlio_mod, server, url):
    try:
        with pytest.raises(ValueError):
            s3dlio_mod.connect(url)
    finally:
        s3dlio_mod.connect(server.tcp_url)


def test_env_server_down_is_connection_error_not_embedded(data):
    """With S3DLIO_SERVER naming a dead address, calls fail with ConnectionError naming it;
    the package must not silently fall back to an embedded server."""
    port = s3dtest.free_tcp_port()
    p = s3dtest.run_py(f"""
        import s3dlio, os
        try:
            s3dlio.get({data.uri(data.size_rel(1))!r})
        except ConnectionError as e:
            assert "127.0.0.1:{port}" in str(e), str(e)
            print("CONNECTION_ERROR")
        else:
            print("NO_ERROR")
        from s3dtest import servers_with_parent_pid
        print("EMBEDDED", servers_with_parent_pid(os.getpid()))
        """, env={"S3DLIO_SERVER": f"tcp://127.0.0.1:{port}",
                  "PYTHONPATH": os.environ.get("PYTHONPATH", "") + ":" +
                  os.path.dirname(os.path.abspath(__file__))})
    assert "CONNECTION_ERROR" in p.stdout, p.stdout + p.stderr
    assert "EMBEDDED []" in p.stdout, p.stdout


def test_stats_counters(s3, data):
    st = s3.stats()
    for k in ("requests", "errors", "bytes_received", "bytes_direct", "bytes_copied",
              "bytes_sent", "connects", "reconnects", "busy_retries"):
        assert k in st, f"stats() lacks {k!r}"
        assert isinstance(st[k], int) and st[k] >= 0
    rel = data.size_rel(1 << 20)
    s3.get(data.uri(rel))
    s3.put_bytes(data.uri("scratch/stats_put.bin"), b"x" * 1000)
    st2 = s3.stats()
    assert st2["requests"] >= st["requests"] + 2
    assert st2["bytes_received"] >= st["bytes_received"] + (1 << 20)
    assert st2["bytes_sent"] >= st["bytes_sent"] + 1000
    os.remove(data.path("scratch/stats_put.bin"))
