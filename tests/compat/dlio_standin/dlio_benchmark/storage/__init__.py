"""dlio_benchmark.storage (stand-in; see the package docstring)."""
