"""Latency and throughput harness: `hallo-rt bench` (a streaming session measured end to end), side-by-side
comparisons, the cost model, and the scripts whose results `benchmarks/README.md` records."""
