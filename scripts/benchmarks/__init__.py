"""Benchmarks run by `python -m scripts.bench`: each module exposes one function returning a result dict."""
