"""dlio_benchmark.common (stand-in; see the package docstring)."""
