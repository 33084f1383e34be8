"""The compatibility suite's runner (tests/compat/run starts it with the project's interpreter).

Runs the original s3dlio's own Python tests, taken at run time from its source distribution on
PyPI (never copied into this repository), against this package (default) or against the original
itself (--original, in a venv of its own), and prints a table: every test, its category from
expectations.tsv, its outcome, and why a test that cannot pass cannot. See README.md.

Steps: fetch + verify the sdist (cached) -> extract python/tests/ and the DLIO adapter into a
fresh work dir -> apply the path-only adaptations (ADAPTATIONS, each must apply exactly) -> start
the S3 emulator (s3rver) and, for this package, an s3dliod serving file://, direct:// and the
emulator's buckets -> pytest over the work dir with JUnit XML -> the training script written from
the original's documentation -> the table -> exit status.

Exit status 1 when a must-pass or orig-bug test does not pass, when the training script fails,
or when a test id in the XML is missing from expectations.tsv or the other way round. With
--original: 1 when a must-pass test fails or an orig-bug test passes there (the table would be
wrong about the original).
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))

SDIST_PROJECT = "s3dlio"
SDIST_VERSION = "0.9.90"
SDIST_FILE = f"s3dlio-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "579d57e4477b0e21374438f6dad4de60b84b0f45d053002dc82ca5e68323d6f6"
SIMPLE_INDEX = f"https://pypi.org/simple/{SDIST_PROJECT}/"
SDIST_TOP = f"s3dlio-{SDIST_VERSION}/"
# what is taken from the sdist, and where it goes in the work dir
EXTRACT = {SDIST_TOP + "python/tests/": "",
           SDIST_TOP + "python/s3dlio/integrations/dlio/": "integrations/dlio/"}

ORIGINAL_WHEEL = "s3dlio==0.9.92"          # the oldest wheel that installs here
PYTEST_ASYNCIO = "pytest-asyncio==0.21.2"  # works with Debian's pytest 7.2

CACHE = os.environ.get("COMPAT_CACHE", os.path.join(HERE, ".cache"))
EXPECTATIONS = os.path.join(HERE, "expectations.tsv")
CATEGORIES = ("must-pass", "orig-bug", "newer-api", "cannot")
REQUIRED = ("must-pass", "orig-bug")

# Buckets the emulator has from the start (the tests name them, or S3_TEST_BUCKET); russ-test5 and
# mpu-py-* are created by the tests themselves with create_bucket.
EMU_BUCKETS = ["signal65-public", "test-python-api", "compat-s3test", "compat-dlio",
               "compat-train", "my-bucket2"]
CREATED_BY_TESTS = ["russ-test5"]
# objects the tests read without writing them first (a public bucket's hello.txt, the prefix
# S3_TEST_BUCKET tests create datasets of)
EMU_SEED = {
    ("signal65-public", "hello.txt"): b"hello from the compat suite\n",
    ("signal65-public", "notes/readme.txt"): b"seeded object\n",
    ("signal65-public", "data/blob.bin"): bytes(range(256)) * 16,
    ("compat-s3test", "test-prefix/a.bin"): b"a" * 1000,
    ("compat-s3test", "test-prefix/b.bin"): b"b" * 2000,
    ("compat-s3test", "prefix/c.bin"): b"c" * 3000,
}
# test_python_mp_get.py reads 200 objects named so from s3://my-bucket2/large-test/ ("large":
# 256 KiB each here, the test checks the call, not a speed)
EMU_SEED.update({("my-bucket2", "large-test/large_object_%d_of_1000.dat" % i):
                 bytes([i % 251]) * (256 << 10) for i in range(200)})
# local files test_v0819_python_api.py::test_directio lists and stats without creating them
DIRECTIO_DIR = "/tmp/directio-test"
DIRECTIO_FILES = {"testfile1.txt": b"direct io test file 1\n", "testfile2.txt": b"file 2\n",
                  "data.bin": b"\0" * 4096}

# Tests not run unless --heavy: they do not fit the suite's CI budget (ids as in the table).
HEAVY = {
    "test_performance_vs_dgen.py::test_bytearray_allocation_and_generation":
        "allocates and fills 16 GiB of bytearrays (100 s and 16 GiB RSS on the original)",
}

# ---- the path-only adaptations: (file, old text, new text, count, why) ----
_SRC_PATH = "removed: it put the original's source tree ahead of the package under test"
ADAPTATIONS = [
    ("test_buffer_protocol_support.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_checkpoint_basic.py",
     "sys.path.insert(0, '/home/eval/Documents/Rust-Devel/s3dlio/python')",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path to the author's checkout"),
    ("test_comprehensive_api.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_enhanced_api.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_final_validation.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_simple_runner.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_working_functionality.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'python'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_loader_return_type_stability.py",
     "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1,
     "sys.path to python/ of the source tree (its s3dlio/ would shadow the package)"),
    ("test_parameter_validation.py", "sys.path.insert(0, 'python')",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path to ./python of a checkout"),
    ("test_python_api.py", "sys.path.insert(0, 'python')",
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path to ./python of a checkout"),
    ("test_phase1_optimization.py", 'sys.path.insert(0, str(Path(__file__).parent / "python"))',
     "pass  # compat: sys.path insert " + _SRC_PATH, 1, "sys.path into the source tree"),
    ("test_python_npy_interop.py", "cwd='/home/eval/Documents/Code/s3dlio'",
     "cwd=os.path.dirname(os.path.abspath(__file__))", 4,
     "cwd of cargo/rustc: the author's checkout -> the work dir (no Rust build there)"),
    ("test_python_npy_interop.py", 'cwd="/home/eval/Documents/Code/s3dlio"',
     "cwd=os.path.dirname(os.path.abspath(__file__))", 1,
     "cwd of `cargo script`: the author's checkout -> the work dir"),
    ("test_range_requests.py", "cwd='/home/eval/Documents/Code/s3dlio'",
     "cwd=os.path.dirname(os.path.abspath(__file__))", 1,
     "cwd of `cargo run --bin s3dlio`: the author's checkout -> the work dir"),
    ("test_bug_fix.py", 'test_dir = "/mnt/vast1/s3dlio_bug_test"',
     'test_dir = "/tmp/s3dlio_bug_test"', 1,
     "a scratch dir on the author's NFS mount -> /tmp (the module writes it at import)"),
]


def log(msg):
    print(f"compat: {msg}", flush=True)


class Failure(Exception):
    pass


# ---- the sdist ----
def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist():
    """The pinned sdist from PyPI's JSON simple index (the file itself: pip would build it)."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, SDIST_FILE)
    if os.path.isfile(path) and _sha256(path) == SDIST_SHA256:
        return path
    req = urllib.request.Request(SIMPLE_INDEX,
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            index = json.load(r)
    except OSError as e:
        raise Failure(f"cannot read {SIMPLE_INDEX}: {e}")
    files = [f for f in index.get("files", []) if f.get("filename") == SDIST_FILE]
    if not files:
        raise Failure(f"{SDIST_FILE} is not in {SIMPLE_INDEX}")
    url = files[0]["url"]
    listed = files[0].get("hashes", {}).get("sha256")
    if listed and listed != SDIST_SHA256:
        raise Failure(f"the index lists sha256 {listed} for {SDIST_FILE}, pinned {SDIST_SHA256}")
    log(f"downloading {url}")
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise Failure(f"cannot download {url}: {e}")
    got = _sha256(tmp)
    if got != SDIST_SHA256:
        os.unlink(tmp)
        raise Failure(f"{SDIST_FILE}: sha256 {got}, pinned {SDIST_SHA256}")
    os.replace(tmp, path)
    return path


def extract(sdist, work):
    """Regular files under EXTRACT's prefixes only, with names checked (no '..', no links)."""
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for m in tar.getmembers():
            for prefix, dest in EXTRACT.items():
                if not m.name.startswith(prefix) or not m.isfile():
                    continue
                rel = m.name[len(prefix):]
                parts = rel.split("/")
                if not rel or rel.startswith("/") or ".." in parts or "__pycache__" in parts:
                    continue
                out = os.path.join(work, dest, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with tar.extractfile(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    if not count:
        raise Failure(f"nothing extracted from {sdist}")
    return count


def adapt(work):
    for name, old, new, count, why in ADAPTATIONS:
        path = os.path.join(work, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        n = text.count(old)
        if n != count:
            raise Failure(f"adaptation of {name} ({why}): expected {count} x {old!r}, found {n}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))


def prepare_work(mode):
    work = os.path.join(CACHE, f"work-{mode}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    n = extract(fetch_sdist(), work)
    adapt(work)
    shutil.copy(os.path.join(HERE, "conftest_compat.py"), os.path.join(work, "conftest.py"))
    shutil.copy(os.path.join(HERE, "test_dlio_adapter.py"), work)
    shutil.copytree(os.path.join(HERE, "dlio_standin"), os.path.join(work, "dlio_standin"))
    with open(os.path.join(work, "pytest.ini"), "w") as f:
        f.write("[pytest]\nasyncio_mode = auto\n")
    log(f"work dir {work}: {n} files from {SDIST_FILE}, {len(ADAPTATIONS)} adaptations")
    return work


# ---- the package under test ----
def original_python():
    """A venv of the original (0.9.92 wheel) beside Debian's torch and numpy."""
    # ".venv" in the name: test_installed_package.py checks the package comes from a venv
    venv = os.path.join(CACHE, ".venv-original")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".compat-ready")
    if os.path.isfile(stamp):
        return py
    shutil.rmtree(venv, ignore_errors=True)
    log(f"creating {venv} ({ORIGINAL_WHEEL}, {PYTEST_ASYNCIO})")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], check=True)
    pip = [py, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "--only-binary", ":all:", ORIGINAL_WHEEL, PYTEST_ASYNCIO],
                   check=True)
    # pip pulls numpy 2, which Debian's torch 1.13 cannot load: Debian's 1.24 shows through
    subprocess.run(pip + ["uninstall", "-y", "numpy"], check=True)
    subprocess.run([py, "-c", "import s3dlio, numpy, torch"], check=True)
    open(stamp, "w").close()
    return py


def default_python():
    venv_py = os.path.join(ROOT, ".venv", "bin", "python")
    return venv_py if os.access(venv_py, os.X_OK) else "/usr/bin/python3"


# ---- the S3 emulator and the server ----
class Environment:
    """s3rver with the buckets and seed objects; for this package, an s3dliod in front of it."""

    def __init__(self, original, s3dliod):
        self.original = original
        self.s3dliod = s3dliod
        self.emu = None
        self.server = None
        self.env = {}

    def start(self):
        import cloudemu  # tests/py: the emulator launchers the cloud tests use
        import s3dtest
        emu_dir = tempfile.mkdtemp(prefix="compat-s3rver-")
        try:
            self.emu = cloudemu.s3rver(emu_dir, EMU_BUCKETS)
        except BaseException as e:  # cloudemu.need() raises pytest's Skipped
            shutil.rmtree(emu_dir, ignore_errors=True)
            raise Failure(f"the S3 emulator does not start ({e}); run tests/emulators/install.sh")
        self.emu.cleanup_dir = emu_dir
        boto = cloudemu.boto_s3(self.emu.endpoint)
        for (bucket, key), data in EMU_SEED.items():
            boto.put_object(Bucket=bucket, Key=key, Body=data)
        os.makedirs(DIRECTIO_DIR, exist_ok=True)
        for name, data in DIRECTIO_FILES.items():
            with open(os.path.join(DIRECTIO_DIR, name), "wb") as f:
                f.write(data)
        aws = {"AWS_ACCESS_KEY_ID": cloudemu.S3RVER_KEY,
               "AWS_SECRET_ACCESS_KEY": cloudemu.S3RVER_SECRET,
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.emu.endpoint}
        self.env = {"S3_TEST_BUCKET": "compat-s3test", "COMPAT_S3_ENDPOINT": self.emu.endpoint}
        if self.original:
            self.env.update(aws)  # the original reads these itself
            return self
        os.environ["S3DLIOD"] = self.s3dliod
        # s3:// allows every bucket: test_multipart_writer creates mpu-py-<pid>-<time>
        allow = ["file:///", "direct:///", "s3://"]
        try:
            self.server = s3dtest.start_server(allow, threads=2,
                                               env=cloudemu.s3_env(self.emu.endpoint))
        except RuntimeError as e:
            raise Failure(f"s3dliod does not start: {e}")
        self.env["S3DLIO_SERVER"] = self.server.tcp_url
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop()
        if self.emu is not None:
            self.emu.stop()


# ---- the runs ----
def run_pytest(py, work, env, junit, args):
    cmd = [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
           "--continue-on-collection-errors", f"--junitxml={junit}"]
    if not args.heavy:
        for test_id in HEAVY:
            cmd += ["--deselect", test_id]
    cmd += args.pytest_args or []
    logf = os.path.join(work, "pytest.log")
    log(f"pytest in {work} (output: {logf})")
    t0 = time.monotonic()
    with open(logf, "w") as out:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    with open(logf) as f:
        tail = f.read().rstrip().splitlines()[-1:]
    log(f"pytest exit {rc} in {time.monotonic() - t0:.0f} s: {tail[0] if tail else ''}")
    return rc


def run_training_script(py, env, work, s3_uri):
    """tests/compat/train_from_docs.py on file:// (this package: its embedded default server, as a
    user gets it) and on the S3 emulator. Returns {row id: (outcome, message)}."""
    script = os.path.join(HERE, "train_from_docs.py")
    out = {}
    file_env = dict(env)
    file_env.pop("S3DLIO_SERVER", None)
    runs = [("train_from_docs.py::file", file_env, "file://" + os.path.join(work, "train-data")),
            ("train_from_docs.py::s3", env, s3_uri)]
    for row, run_env, base in runs:
        t0 = time.monotonic()
        # its own process group: a hung DataLoader leaves worker processes behind
        proc = subprocess.Popen([py, script, base], env=run_env, cwd=work, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            out[row] = ("FAIL", "the script did not finish within 600 s")
            log(f"{row}: FAIL (timeout)")
            continue
        p = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        with open(os.path.join(work, row.replace("::", "-") + ".log"), "w") as f:
            f.write(p.stdout + p.stderr)
        failed = [ln for ln in p.stdout.splitlines() if ln.startswith("STEP") and "FAIL" in ln]
        summary = [ln for ln in p.stdout.splitlines() if ln.startswith("STEPS")]
        if p.returncode == 0:
            out[row] = ("pass", summary[0] if summary else "")
        else:
            msg = "; ".join(failed) or (p.stderr.strip().splitlines() or ["no output"])[-1]
            out[row] = ("FAIL", msg[:400])
        log(f"{row}: {out[row][0]} ({time.monotonic() - t0:.0f} s) "
            f"{summary[0] if summary else ''}")
    return out


# ---- results ----
def test_id(tc):
    """pytest's node id from a JUnit testcase (classname is module[.Class])."""
    cls = tc.get("classname") or ""
    name = tc.get("name") or ""
    if not cls:  # a collection error: the module
        return name.replace(".", "/") + ".py"
    parts = cls.split(".")
    return "::".join([parts[0] + ".py"] + parts[1:] + [name])


def read_junit(path):
    results = {}
    if not os.path.isfile(path):
        return results
    for tc in ET.parse(path).iter("testcase"):
        outcome, msg = "pass", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "FAIL", "error": "ERROR", "skipped": "skip"}[child.tag]
                msg = (child.get("message") or (child.text or "")).strip()
                if child.tag != "skipped":
                    break
        msg = " ".join(msg.split())
        results[test_id(tc)] = (outcome, msg[:300])
    return results


def read_expectations():
    rows = {}
    with open(EXPECTATIONS, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise Failure(f"{EXPECTATIONS}:{n}: expected 'id<TAB>category'")
            tid, cat = parts
            kind = cat.split(":", 1)[0].strip()
            if kind not in CATEGORIES:
                raise Failure(f"{EXPECTATIONS}:{n}: unknown category {cat!r}")
            if kind == "cannot" and not cat[len("cannot"):].strip(": "):
                raise Failure(f"{EXPECTATIONS}:{n}: 'cannot' needs a reason")
            if tid in rows:
                raise Failure(f"{EXPECTATIONS}:{n}: {tid} listed twice")
            rows[tid] = cat
    return rows


def outcome_of(tid, results, files):
    """Every file has a module row (its id has no '::'): it passes when pytest imported the
    file without error (some files are scripts that do their work at import). The tests of a
    file that did not import are reported as not collected."""
    if tid in results:
        return results[tid]
    module = tid.split("::", 1)[0]
    if module not in files:
        return ("missing", "no such file in the work dir")
    if "::" not in tid:
        return ("pass", "imported without error")
    if results.get(module, ("pass",))[0] != "pass":
        return ("ERROR", "not collected: the module failed to import")
    if tid in HEAVY:
        return ("not run", f"heavy: {HEAVY[tid]}; --heavy runs it")
    return None


def report(results, expectations, original, filtered, tsv, work):
    label = "the original (s3dlio 0.9.92)" if original else "this package"
    rows, problems = [], []
    files = set(os.listdir(work)) | {"train_from_docs.py"}
    for tid in sorted(set(results) | set(expectations)):
        cat = expectations.get(tid)
        if filtered and "::" not in tid and not any(r.split("::")[0] == tid for r in results):
            continue  # a file the pytest arguments did not select
        got = outcome_of(tid, results, files)
        if cat is None:
            problems.append(f"{tid}: in the results, not in expectations.tsv")
            cat = "(not in table)"
        if got is None:
            if filtered:
                continue
            problems.append(f"{tid}: in expectations.tsv, not in the results")
            got = ("missing", "")
        outcome, msg = got
        kind = cat.split(":", 1)[0]
        note = ""
        if kind == "cannot":
            note = cat.split(":", 1)[1].strip()
            if outcome != "pass" and msg:
                note += f" [{msg[:160]}]"
        elif outcome != "pass":
            note = msg
        if kind in REQUIRED and outcome not in ("pass", "not run"):
            if not original or kind == "must-pass":
                problems.append(f"{tid}: {kind} test did not pass: {msg[:200]}")
        if original and kind == "orig-bug" and outcome == "pass":
            problems.append(f"{tid}: orig-bug, yet passes on the original")
        rows.append((tid, kind, outcome, note))

    width = max([len(r[0]) for r in rows] + [20])
    print()
    print(f"==== compatibility table: the original's tests on {label}")
    print(f"{'test':<{width}}  {'category':<9}  {'outcome':<7}  why / message")
    for tid, kind, outcome, note in rows:
        print(f"{tid:<{width}}  {kind:<9}  {outcome:<7}  {note}")
    print()
    counts = {}
    for _, kind, outcome, _ in rows:
        c = counts.setdefault(kind, {})
        c[outcome] = c.get(outcome, 0) + 1
    for kind in CATEGORIES + ("(not in table)",):
        if kind in counts:
            parts = ", ".join(f"{n} {o}" for o, n in sorted(counts[kind].items()))
            print(f"  {kind:<10} {sum(counts[kind].values()):>4} tests: {parts}")
    if tsv:
        with open(tsv, "w", encoding="utf-8") as f:
            for tid, kind, outcome, note in rows:
                f.write(f"{tid}\t{kind}\t{outcome}\t{note}\n")
    return problems


def main():
    ap = argparse.ArgumentParser(
        prog="tests/compat/run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original", action="store_true",
                    help="run against the original (s3dlio 0.9.92 from PyPI, own venv)")
    ap.add_argument("--pythonpath", default=os.environ.get("COMPAT_PYTHONPATH",
                                                           os.path.join(ROOT, "build", "python")),
                    help="the package under test (default build/python; env COMPAT_PYTHONPATH)")
    ap.add_argument("--s3dliod", default=os.environ.get("COMPAT_S3DLIOD",
                                                        os.path.join(ROOT, "build", "bin",
                                                                     "s3dliod")),
                    help="its server binary (default build/bin/s3dliod; env COMPAT_S3DLIOD)")
    ap.add_argument("--python", default=os.environ.get("COMPAT_PYTHON"),
                    help="interpreter for this package (default .venv/bin/python)")
    ap.add_argument("--heavy", action="store_true", help="also run the tests in HEAVY")
    ap.add_argument("--tsv", help="also write the table to this file (tab-separated)")
    ap.add_argument("--no-train", action="store_true", help="skip train_from_docs.py")
    ap.add_argument("pytest_args", nargs="*",
                    help="after --: extra pytest arguments (e.g. -k EXPR, a file name); the "
                         "table then skips tests that were not selected")
    args = ap.parse_args()
    mode = "original" if args.original else "ours"
    try:
        expectations = read_expectations()
        if args.no_train:
            expectations = {k: v for k, v in expectations.items()
                            if not k.startswith("train_from_docs.py::")}
        work = prepare_work(mode)
        if args.original:
            py = original_python()
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "S3DLIO_SERVER", "S3DLIOD")
                   and not k.startswith("AWS_")}
        else:
            py = args.python or default_python()
            pp = os.path.abspath(args.pythonpath)
            if not os.path.isdir(os.path.join(pp, "s3dlio")):
                raise Failure(f"no s3dlio package in {pp} (build first, or --pythonpath)")
            if not os.access(args.s3dliod, os.X_OK):
                raise Failure(f"{args.s3dliod} is not an executable (build first, or --s3dliod)")
            env = {k: v for k, v in os.environ.items()
                   if k not in ("S3DLIO_SERVER",) and not k.startswith("AWS_")}
            # through a link named like a venv: test_installed_package.py checks that the
            # package is imported from a path containing ".venv" (an installed copy, not a
            # source tree), which the build's python/ dir stands for
            link = os.path.join(work, ".venv-under-test")
            os.symlink(pp, link)
            env.update(PYTHONPATH=link, S3DLIOD=os.path.abspath(args.s3dliod))
        probe = subprocess.run([py, "-c", "import pytest_asyncio, pytest_timeout"],
                               env=env, capture_output=True, text=True)
        if probe.returncode:
            raise Failure(f"{py} lacks pytest-asyncio or pytest-timeout (deploy/install-deps.sh "
                          f"installs them): {probe.stderr.strip().splitlines()[-1:]}")
        envs = Environment(args.original, os.path.abspath(args.s3dliod)).start()
        try:
            env.update(envs.env)
            junit = os.path.join(work, "junit.xml")
            run_pytest(py, work, env, junit, args)
            results = read_junit(junit)
            if not results:
                raise Failure(f"pytest wrote no results ({work}/pytest.log)")
            if not args.no_train and not args.pytest_args:
                results.update(run_training_script(py, env, work, "s3://compat-train/run/"))
        finally:
            envs.stop()
        filtered = bool(args.pytest_args)
        problems = report(results, expectations, args.original, filtered, args.tsv, work)
    except Failure as e:
        log(f"error: {e}")
        return 2
    print()
    if problems:
        print(f"compat: {len(problems)} problem(s) against expectations.tsv:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("compat: every must-pass and orig-bug test passes; the table matches the results"
          if not args.original else
          "compat: the original passes every must-pass test and fails every orig-bug test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
