"""Harness-only pytest configuration of the compatibility suite (tests/compat/run copies it into
the work directory as conftest.py, beside the original's test files).

It adds nothing a test asserts; it supplies what the original's script-style test files expect
from the driver their own `if __name__ == "__main__":` block is (those files were written to be
run as scripts, and pytest collects them too):

- `results`: the test module's own TestResults() (some tests take it as an argument, their
  main() creates one and passes it).
- `s3dlio`, `base_uri`, `num_threads`, `num_objects`, `obj_size`: the arguments the main() of
  test_concurrent_runtime.py passes (its argparse defaults; a file:// temp directory).
- Verdicts the scripts report without asserting: a test that records a failed sub-check in
  `results`, or returns False (alone or first in a tuple) or a non-empty error list, has failed
  by its own account (its main() counts exactly these as failures), and is reported failed.
- test_regex.py: its setup_test_files() before its tests and cleanup() after them, the calls its
  __main__ block wraps around test_list() and test_download().
- A per-test timeout (pytest-timeout), COMPAT_TIMEOUT seconds (default 90).

The asyncio mode (auto, pytest-asyncio) is set in the work directory's pytest.ini.
"""
import inspect
import os
import shutil
import tempfile

import pytest

TIMEOUT = int(os.environ.get("COMPAT_TIMEOUT", "90"))


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT))


# ---- fixtures the script-style tests take ----
class _Results:
    """Stand-in for modules that take `results` but define no TestResults."""

    def __init__(self):
        self.tests = []

    def add_result(self, name, passed, message=""):
        self.tests.append((name, passed, message))


@pytest.fixture
def results(request):
    cls = getattr(request.module, "TestResults", None)
    return cls() if isinstance(cls, type) else _Results()


@pytest.fixture(name="s3dlio", scope="module")
def s3dlio_module():
    import s3dlio
    return s3dlio


@pytest.fixture(scope="module")
def base_uri():
    # test_concurrent_runtime.py's main(): base_uri = f"file://{tempfile.mkdtemp(...)}"; its
    # tests run in file order (put, get, stat, exists, delete...) on the same base
    d = tempfile.mkdtemp(prefix="s3dlio_rt_test_")
    yield f"file://{d}"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def num_threads():
    return 16


@pytest.fixture
def num_objects():
    return 200


@pytest.fixture
def obj_size():
    return 65536


@pytest.fixture(scope="module", autouse=True)
def _script_setup_teardown(request):
    mod = request.module
    if mod.__name__ != "test_regex":
        yield
        return
    mod.setup_test_files()
    try:
        yield
    finally:
        mod.cleanup()


# ---- the scripts' own verdicts ----
def _recorded(results):
    """The (name, passed, message) entries a TestResults-like object holds."""
    for attr in ("tests", "results"):
        entries = getattr(results, attr, None)
        if isinstance(entries, list):
            return entries
    return []


def _returned_failure(value):
    if value is False:
        return "returned False"
    if isinstance(value, tuple) and value and value[0] is False:
        return f"returned {value!r}"[:300]
    if isinstance(value, list) and value:
        return f"returned {len(value)} errors, first: {value[0]!r}"[:300]
    return None


def pytest_pyfunc_call(pyfuncitem):
    """Calls the test as pytest's own hook does, then applies the verdict rules above.
    Coroutine functions pytest-asyncio did not wrap are left to pytest (it skips them)."""
    fn = pyfuncitem.obj
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return None
    args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
    value = fn(**args)
    problems = []
    res = pyfuncitem.funcargs.get("results")
    if res is not None and "results" in pyfuncitem._fixtureinfo.argnames:
        failed = [e for e in _recorded(res) if isinstance(e, tuple) and len(e) >= 2 and not e[1]]
        if failed:
            problems.append("recorded failed checks: " + "; ".join(
                f"{e[0]}: {e[2] if len(e) > 2 else ''}"[:160] for e in failed[:5]))
    why = _returned_failure(value)
    if why:
        problems.append(why)
    if problems:
        pytest.fail("script verdict: " + " | ".join(problems), pytrace=False)
    return True
