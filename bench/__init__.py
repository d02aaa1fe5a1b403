"""Throughput / latency / accuracy benchmark of bertserve: `python -m bench.run --store model_store`."""
