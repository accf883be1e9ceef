"""Benchmarks: serving performance (``bench.serving``) and the rollout demo (``bench.rollout``)."""
