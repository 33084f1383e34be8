"""JAX and TensorFlow helpers (the original's ``s3dlio.jax_tf``): ``S3JaxIterable`` (also
``JaxIterable``) yields each object under a prefix as a 1-D NumPy uint8 array, ready for
``jnp.asarray``; ``make_tf_dataset`` builds a ``tf.data.Dataset`` of uint8 tensors from the
same stream.

Items come from the package's loader (C prefetch engine, one epoch per iteration, shuffle and
seed honoured). Arrays are zero-copy views of the received buffer (read-only); with
``writable=True`` each is copied once into writable memory. Unlike the original, this module
needs only NumPy: JAX is imported by the caller, TensorFlow only by make_tf_dataset.
"""

import numpy as np

from ._dataset import create_async_loader

__all__ = ["S3JaxIterable", "JaxIterable", "make_tf_dataset"]


def _opts(batch_size=1, drop_last=False, shuffle=False, seed=0, num_workers=0, prefetch=8,
          auto_tune=False):
    return {"batch_size": batch_size, "drop_last": drop_last, "shuffle": shuffle,
            "seed": seed, "num_workers": num_workers, "prefetch": prefetch,
            "auto_tune": auto_tune, "zero_copy": True}


def _arrays(uri, opts, writable):
    """One epoch of the objects under uri as uint8 arrays."""
    loader = create_async_loader(uri, dict(opts, zero_copy=True))
    for view in loader:
        if writable:
            yield np.frombuffer(bytearray(view), dtype=np.uint8)
        else:
            yield np.frombuffer(view, dtype=np.uint8)


class S3JaxIterable:
    """Iterates the objects under a URI prefix (any backend) as NumPy uint8 arrays; each
    ``iter()`` is one epoch.

    >>> it = S3JaxIterable.from_prefix("file:///data/train/", shuffle=True, seed=1)
    >>> for a in it:
    ...     x = jnp.asarray(a)
    """

    def __init__(self, uri, *, loader_opts, transform=None, writable=False,
                 suppress_nonwritable_warning=True):
        self._uri = uri
        self._opts = dict(loader_opts)
        self._xfm = transform
        self._writable = bool(writable)
        self._suppress_nonwritable_warning = suppress_nonwritable_warning

    @classmethod
    def from_prefix(cls, uri, *, prefetch=8, num_workers=0, batch_size=1, drop_last=False,
                    shuffle=False, seed=0, auto_tune=False, transform=None, writable=False,
                    suppress_nonwritable_warning=True):
        return cls(uri, loader_opts=_opts(batch_size, drop_last, shuffle, seed, num_workers,
                                          prefetch, auto_tune),
                   transform=transform, writable=writable,
                   suppress_nonwritable_warning=suppress_nonwritable_warning)

    def __iter__(self):
        for a in _arrays(self._uri, self._opts, self._writable):
            yield self._xfm(a) if self._xfm is not None else a


JaxIterable = S3JaxIterable


def make_tf_dataset(uri, *, prefetch=8, num_workers=0, batch_size=1, drop_last=False,
                    shuffle=False, seed=0, auto_tune=False, map_fn=None, writable=False,
                    suppress_nonwritable_warning=True):
    """A tf.data.Dataset of 1-D uint8 tensors, one per object under uri (TensorFlow copies
    each into its own tensor). map_fn, when given, is applied with tf.data.AUTOTUNE."""
    import tensorflow as tf  # only here: the rest of the package does not need it

    opts = _opts(batch_size, drop_last, shuffle, seed, num_workers, prefetch, auto_tune)

    def gen():
        yield from _arrays(uri, opts, writable)

    ds = tf.data.Dataset.from_generator(
        gen, output_signature=tf.TensorSpec(shape=(None,), dtype=tf.uint8))
    if map_fn is not None:
        ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds
