"""A minimal stand-in for the DLIO benchmark package (dlio_benchmark), just the interface the
original s3dlio's DLIO storage adapter (python/s3dlio/integrations/dlio/s3dlio_storage.py) imports,
following DLIO's published modules: common.constants, common.enumerations,
storage.storage_handler, utils.utility (and utils.config's ConfigArguments behind DataStorage).

Why not the real one: `pip install --no-deps dlio_benchmark` (2.0.0) installs, but
storage.storage_handler imports hydra (via utils.config) and utils.utility imports mpi4py, which
needs an MPI library; and without dftracer its fallback Profile takes no positional argument, so
the adapter's `Profile(MODULE_STORAGE)` / `@dlp.log` would fail anyway.
"""
