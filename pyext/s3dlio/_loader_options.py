"""Loader options: PyLoaderOptions (the original's builder) and the parsing of an options
dict, a PyLoaderOptions and keywords into the one dict the datasets and loaders read.

Options dicts take the original's names (batch_size, drop_last, shuffle, seed, num_workers,
prefetch, auto_tune, reader_mode, part_size, max_inflight_parts, shard_rank,
shard_world_size, worker_id, num_workers_pytorch) and this package's (max_in_flight,
zero_copy). An unknown name warns (UserWarning naming it and the valid ones) and is ignored,
as the original does. A value of a known option that cannot be meant raises instead of
being replaced by the default as the original does: a wrong type raises TypeError, a value
out of range InvalidArgumentError (a ValueError and an s3dlio.Error). A None value counts
as not given (the default, or the value of an earlier source).

PyLoaderOptions carries the original's framework knobs too (pin_memory, persistent_workers,
timeout, multiprocessing context, memory format, non_blocking, transforms, collate buffer):
readable, and passed on untouched; the loaders act on the loading options, the sampler
(random_sampling: a shuffled order, with replacement if asked; distributed_sampling: a
shuffled order of the rank's share) and generator_seed (the shuffle seed when set).
"""

import operator
import os
import sys
import warnings

from . import _core

__all__ = ["PyLoaderOptions"]

# The original's option names (opts_from_dict), then this package's.
ORIGINAL_KEYS = ("batch_size", "drop_last", "shuffle", "seed", "num_workers", "prefetch",
                 "auto_tune", "reader_mode", "part_size", "max_inflight_parts", "shard_rank",
                 "shard_world_size", "worker_id", "num_workers_pytorch")
OUR_KEYS = ("max_in_flight", "zero_copy")
KNOWN_KEYS = ORIGINAL_KEYS + OUR_KEYS

# Defaults of an options dict. seed None: one random seed per loader (its epochs and its
# DataLoader workers agree). prefetch: batches fetched ahead (0: the engine's minimum).
DEFAULTS = {
    "batch_size": 32, "drop_last": False, "shuffle": False, "seed": None, "num_workers": 0,
    "prefetch": 4, "auto_tune": False, "reader_mode": "sequential", "part_size": 8 << 20,
    "max_inflight_parts": 4, "shard_rank": 0, "shard_world_size": 1, "worker_id": 0,
    "num_workers_pytorch": 1, "max_in_flight": None, "zero_copy": False,
    # set only from a PyLoaderOptions' sampler (not options-dict names)
    "_replacement": False,
}

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel():
    """The stacklevel of the first frame outside this package, for warnings.warn called by
    the caller of this function."""
    f = sys._getframe(2)
    level = 2
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
        level += 1
    return level


def _bad(msg):
    return _core.InvalidArgumentError(msg)


def as_int(name, v, minimum=0):
    if isinstance(v, bool) or isinstance(v, float):
        raise TypeError("%s must be an int, not %s" % (name, type(v).__name__))
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError("%s must be an int, not %s" % (name, type(v).__name__)) from None
    if v < minimum:
        raise _bad("%s must be >= %d, got %d" % (name, minimum, v))
    return v


def as_bool(name, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if type(v).__name__ == "bool_":  # numpy.bool_
        return bool(v)
    raise TypeError("%s must be a bool, not %s" % (name, type(v).__name__))


def _check_value(k, v):
    """The value of option k, checked and normalised."""
    if k in ("batch_size", "shard_world_size", "part_size", "max_inflight_parts",
             "num_workers_pytorch"):
        return as_int(k, v, 1)
    if k in ("num_workers", "prefetch", "shard_rank", "worker_id"):
        return as_int(k, v, 0)
    if k in ("drop_last", "shuffle", "auto_tune", "zero_copy", "_replacement"):
        return as_bool(k, v)
    if k == "seed":
        return as_int(k, v, -(1 << 63))
    if k == "max_in_flight":
        return as_int(k, v, 1)
    if k == "reader_mode":
        if not isinstance(v, str):
            raise TypeError("reader_mode must be a str, not %s" % type(v).__name__)
        m = v.lower()
        if m not in ("sequential", "range"):
            raise _bad("reader_mode must be 'sequential' or 'range', got %r" % v)
        return m
    raise AssertionError(k)


def parse(*sources):
    """(options, given) from sources (None, a dict, a PyLoaderOptions, or a mapping of
    keywords), later ones winning: options has every loader option, given only those the
    sources set (a PyLoaderOptions sets all its loading options, batch_size only when its
    builder set it, so create_async_loader can still default to 1 as the original does).
    Unknown names warn and are ignored; a None value counts as not given."""
    o = dict(DEFAULTS)
    given = {}
    for src in sources:
        if src is None:
            continue
        if isinstance(src, PyLoaderOptions):
            items = src._loader_dict()
            if "batch_size" not in src._set:
                del items["batch_size"]
            items = items.items()
        elif hasattr(src, "items"):
            items = src.items()
        else:
            raise TypeError("loader options must be a dict or a PyLoaderOptions, not %s"
                            % type(src).__name__)
        for k, v in items:
            if k not in DEFAULTS:
                warnings.warn("unknown loader option %r ignored (valid options: %s)"
                              % (k, ", ".join(KNOWN_KEYS)), UserWarning,
                              stacklevel=_user_stacklevel())
                continue
            if v is not None:  # None: not given here
                o[k] = given[k] = _check_value(k, v)
    if o["shard_rank"] >= o["shard_world_size"]:
        raise _bad("shard_rank must be < shard_world_size, got %d and %d"
                   % (o["shard_rank"], o["shard_world_size"]))
    if o["worker_id"] >= o["num_workers_pytorch"]:
        raise _bad("worker_id must be < num_workers_pytorch, got %d and %d"
                   % (o["worker_id"], o["num_workers_pytorch"]))
    return o, given


# ---- PyLoaderOptions ----

class _IntKnob(int):
    """An int option value that is also its builder method: ``opts.num_workers == 8`` and
    ``opts.num_workers(8)`` both work (in the original the method hides the value)."""

    def __new__(cls, value, opts, method):
        self = int.__new__(cls, value)
        self._opts = opts
        self._method = method
        return self

    def __call__(self, *args, **kwargs):
        return getattr(self._opts, self._method)(*args, **kwargs)

    def __reduce__(self):
        return int, (int(self),)

    def __repr__(self):
        return int.__repr__(self)

    __str__ = __repr__


class _BoolKnob(_IntKnob):
    """A bool option value that is also its builder method (compares, hashes and tests like
    True/False; Python allows no subclass of bool)."""

    def __reduce__(self):
        return bool, (bool(self),)

    def __repr__(self):
        return "True" if self else "False"

    __str__ = __repr__


# Fields: name -> default (the original's LoaderOptions defaults, Rust side).
_FIELDS = {
    "batch_size": 32, "drop_last": False, "shuffle": False, "seed": 0, "num_workers": 0,
    "prefetch": 0, "auto_tune": False, "reader_mode": "sequential", "part_size": 8 << 20,
    "max_inflight_parts": 4, "shard_rank": 0, "shard_world_size": 1, "worker_id": 0,
    "num_workers_pytorch": 1, "pin_memory": False, "persistent_workers": False,
    "timeout_seconds": None, "multiprocessing_context": "spawn", "sampler_type": "sequential",
    "replacement": False, "sampler_rank": None, "sampler_world_size": None,
    "memory_format": "auto", "non_blocking": False, "generator_seed": None,
    "enable_transforms": False, "collate_buffer_size": 1024,
}

# Names that are both a value and a builder method (the builder takes the same name).
_BOOL_KNOBS = ("drop_last", "auto_tune", "pin_memory", "persistent_workers", "non_blocking",
               "enable_transforms")
_INT_KNOBS = ("num_workers", "prefetch", "collate_buffer_size")


class PyLoaderOptions:
    """Loader options with the original's fluent builder: every method returns new options
    and leaves these unchanged::

        opts = PyLoaderOptions().with_batch_size(256).shuffle(True, 42).pin_memory(True)
        opts.batch_size == 256 and opts.pin_memory == True

    Accepted wherever an options dict is. Keywords of the constructor set options by name
    (``PyLoaderOptions(batch_size=8, reader_mode="range")``). Presets: ``gpu_optimized()``
    (pin_memory, persistent_workers, non_blocking, channels_first, spawn),
    ``distributed_optimized(rank, world_size)`` (gpu_optimized, distributed sampling and
    sharding), ``debug_mode()`` (num_workers 0, persistent_workers off, timeout 10 s,
    auto_tune off)."""

    __slots__ = ("_v", "_set")

    def __init__(self, **options):
        self._v = dict(_FIELDS)
        self._set = frozenset()
        for k, v in options.items():
            if k not in _FIELDS:
                raise TypeError("PyLoaderOptions() got an unexpected option %r (options: %s)"
                                % (k, ", ".join(_FIELDS)))
            self._v[k] = v
        self._set = frozenset(options)
        self._validate()

    def _validate(self):
        v = self._v
        for k in ("batch_size", "part_size", "max_inflight_parts", "shard_world_size",
                  "num_workers_pytorch"):
            v[k] = as_int(k, v[k], 1)
        for k in ("num_workers", "prefetch", "shard_rank", "worker_id"):
            v[k] = as_int(k, v[k], 0)
        v["collate_buffer_size"] = max(64, as_int("collate_buffer_size",
                                                  v["collate_buffer_size"], 0))
        for k in ("drop_last", "shuffle", "auto_tune", "pin_memory", "persistent_workers",
                  "replacement", "non_blocking", "enable_transforms"):
            v[k] = as_bool(k, v[k])
        v["seed"] = as_int("seed", v["seed"], 0)
        if v["generator_seed"] is not None:
            v["generator_seed"] = as_int("generator_seed", v["generator_seed"], 0)
        v["reader_mode"] = _check_value("reader_mode", v["reader_mode"])
        if v["timeout_seconds"] is not None:
            t = v["timeout_seconds"]
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError("timeout_seconds must be a number, not %s" % type(t).__name__)
            if not t > 0:
                raise _bad("timeout_seconds must be > 0, got %r" % (t,))
            v["timeout_seconds"] = float(t)
        if v["multiprocessing_context"] not in ("spawn", "fork", "forkserver"):
            raise _bad("multiprocessing_context must be 'spawn', 'fork' or 'forkserver', "
                       "got %r" % (v["multiprocessing_context"],))
        if v["memory_format"] not in ("auto", "channels_first", "channels_last"):
            raise _bad("memory_format must be 'auto', 'channels_first' or 'channels_last', "
                       "got %r" % (v["memory_format"],))
        if v["sampler_type"] not in ("sequential", "random", "distributed"):
            raise _bad("sampler_type must be 'sequential', 'random' or 'distributed', got %r"
                       % (v["sampler_type"],))
        if v["shard_rank"] >= v["shard_world_size"]:
            raise _bad("shard_rank must be < shard_world_size, got %d and %d"
                       % (v["shard_rank"], v["shard_world_size"]))
        if v["worker_id"] >= v["num_workers_pytorch"]:
            raise _bad("worker_id must be < num_workers_pytorch, got %d and %d"
                       % (v["worker_id"], v["num_workers_pytorch"]))
        if v["sampler_type"] == "distributed":
            r, w = v["sampler_rank"], v["sampler_world_size"]
            w = as_int("world_size", w, 1)
            r = as_int("rank", r, 0)
            if r >= w:
                raise _bad("rank must be < world_size, got %d and %d" % (r, w))
            v["sampler_rank"], v["sampler_world_size"] = r, w

    def _with(self, **changes):
        new = PyLoaderOptions.__new__(PyLoaderOptions)
        new._v = dict(self._v)
        new._v.update(changes)
        new._set = self._set | frozenset(changes)
        new._validate()
        return new

    # ---- the original's builder methods (same names and keywords) ----
    def with_batch_size(self, size):
        return self._with(batch_size=size)

    def _drop_last(self, yes):
        return self._with(drop_last=yes)

    def _shuffle(self, on, seed):
        # as the original: shuffle(False, s) leaves the seed as it was
        if as_bool("on", on):
            return self._with(shuffle=True, seed=seed)
        as_int("seed", seed, 0)
        return self._with(shuffle=False)

    def _num_workers(self, n):
        return self._with(num_workers=n)

    def _prefetch(self, n):
        return self._with(prefetch=n)

    def _auto_tune(self, on):
        return self._with(auto_tune=on)

    def _pin_memory(self, pin):
        return self._with(pin_memory=pin)

    def _persistent_workers(self, persistent):
        return self._with(persistent_workers=persistent)

    def with_timeout(self, seconds):
        return self._with(timeout_seconds=seconds)

    def use_spawn(self):
        return self._with(multiprocessing_context="spawn")

    def use_fork(self):
        return self._with(multiprocessing_context="fork")

    def use_forkserver(self):
        return self._with(multiprocessing_context="forkserver")

    def random_sampling(self, replacement):
        return self._with(sampler_type="random", replacement=replacement,
                          sampler_rank=None, sampler_world_size=None)

    def distributed_sampling(self, rank, world_size):
        return self._with(sampler_type="distributed", replacement=False, sampler_rank=rank,
                          sampler_world_size=world_size)

    def channels_last(self):
        return self._with(memory_format="channels_last")

    def channels_first(self):
        return self._with(memory_format="channels_first")

    def _non_blocking(self, non_blocking):
        return self._with(non_blocking=non_blocking)

    def with_generator_seed(self, seed):
        return self._with(generator_seed=seed)

    def _enable_transforms(self, enable):
        return self._with(enable_transforms=enable)

    def _collate_buffer_size(self, size):
        return self._with(collate_buffer_size=size)

    def gpu_optimized(self):
        return self._with(pin_memory=True, persistent_workers=True, non_blocking=True,
                          memory_format="channels_first", multiprocessing_context="spawn")

    def distributed_optimized(self, rank, world_size):
        return self.gpu_optimized().distributed_sampling(rank, world_size)._with(
            shard_rank=rank, shard_world_size=world_size)

    def debug_mode(self):
        return self._with(num_workers=0, persistent_workers=False, timeout_seconds=10.0,
                          auto_tune=False)

    # ---- values ----
    @property
    def batch_size(self):
        return self._v["batch_size"]

    @property
    def seed(self):
        return self._v["seed"]

    @property
    def shuffle(self):
        """The value (True/False); called, ``shuffle(on, seed)`` the builder."""
        return _BoolKnob(self._v["shuffle"], self, "_shuffle")

    @property
    def timeout_seconds(self):
        return self._v["timeout_seconds"]

    @property
    def shard_rank(self):
        return self._v["shard_rank"]

    @property
    def shard_world_size(self):
        return self._v["shard_world_size"]

    @property
    def worker_id(self):
        return self._v["worker_id"]

    @property
    def num_workers_pytorch(self):
        return self._v["num_workers_pytorch"]

    @property
    def reader_mode(self):
        return self._v["reader_mode"]

    @property
    def part_size(self):
        return self._v["part_size"]

    @property
    def max_inflight_parts(self):
        return self._v["max_inflight_parts"]

    @property
    def multiprocessing_context(self):
        """"spawn" (the default), "fork" or "forkserver"."""
        return self._v["multiprocessing_context"]

    @property
    def memory_format(self):
        """"auto" (the default), "channels_first" or "channels_last"."""
        return self._v["memory_format"]

    @property
    def sampler_type(self):
        """"sequential" (the default), "random" or "distributed"."""
        return self._v["sampler_type"]

    @property
    def replacement(self):
        return self._v["replacement"]

    @property
    def sampler_rank(self):
        return self._v["sampler_rank"]

    @property
    def sampler_world_size(self):
        return self._v["sampler_world_size"]

    @property
    def generator_seed(self):
        return self._v["generator_seed"]

    def to_dict(self):
        """Every option with its plain value."""
        return dict(self._v)

    def _loader_dict(self):
        """The options dict the loaders read (see the module doc for the sampler)."""
        v = self._v
        d = {k: v[k] for k in ORIGINAL_KEYS}
        sampler = v["sampler_type"]
        if sampler != "sequential":
            d["shuffle"] = True
            d["_replacement"] = v["replacement"]
        if sampler == "distributed" and v["shard_world_size"] == 1:
            d["shard_rank"] = v["sampler_rank"]
            d["shard_world_size"] = v["sampler_world_size"]
        if v["generator_seed"] is not None:
            d["seed"] = v["generator_seed"]
        return d

    def __eq__(self, other):
        if not isinstance(other, PyLoaderOptions):
            return NotImplemented
        return self._v == other._v

    def __hash__(self):
        return hash(tuple(sorted(self._v.items())))

    def __reduce__(self):
        return _rebuild, (dict(self._v), tuple(sorted(self._set)))

    def __repr__(self):
        diff = ["%s=%r" % (k, v) for k, v in self._v.items() if v != _FIELDS[k]]
        return "PyLoaderOptions(%s)" % ", ".join(diff)


def _rebuild(values, set_names):
    new = PyLoaderOptions.__new__(PyLoaderOptions)
    new._v = dict(_FIELDS)
    new._v.update(values)
    new._set = frozenset(set_names)
    new._validate()
    return new


def _knob(name, cls):
    method = "_" + name

    def get(self):
        return cls(self._v[name], self, method)
    get.__doc__ = ("The value of %s; called, %s(...) is the builder (new options)."
                   % (name, name))
    return property(get)


for _n in _BOOL_KNOBS:
    setattr(PyLoaderOptions, _n, _knob(_n, _BoolKnob))
for _n in _INT_KNOBS:
    setattr(PyLoaderOptions, _n, _knob(_n, _IntKnob))
del _n
