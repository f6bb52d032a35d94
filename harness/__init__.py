"""What the tests and the benchmarks share: a live gunicorn, raw HTTP, the evaluation sets and the bicubic baselines."""
