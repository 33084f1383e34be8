"""dlio_benchmark.utils.utility (stand-in): Profile, DLIO's profiling decorator factory
(dftracer's dft_fn in the real package): Profile(module_name).log / .log_init wrap a method.
This one counts the calls per method name, so a test can see which entry points ran."""
import functools


class Profile:
    calls = {}

    def __init__(self, cat, name=None, epoch=None, step=None, image_idx=None, image_size=None):
        self.cat = cat
        self.name = name

    def _wrap(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            key = f"{self.cat}.{func.__qualname__}"
            Profile.calls[key] = Profile.calls.get(key, 0) + 1
            return func(*args, **kwargs)
        return wrapper

    def log(self, func):
        return self._wrap(func)

    def log_init(self, func):
        return self._wrap(func)

    def iter(self, func, name="loop", iter_name="step"):
        return func

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, **kwargs):
        return self

    def flush(self):
        pass

    def reset(self):
        pass
