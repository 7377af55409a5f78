"""Benchmarks (``python benchmarks/<name>.py``) and the engine stand-in they and the tests use
(:mod:`serve_apps.null_engine`); not shipped in the distribution."""
