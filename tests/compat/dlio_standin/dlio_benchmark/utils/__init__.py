"""dlio_benchmark.utils (stand-in; see the package docstring)."""
