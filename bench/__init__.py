"""mathforge.bench: benchmarks whose results go to bench/results/<device>/ (never into tests)."""
