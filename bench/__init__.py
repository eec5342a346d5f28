"""The Resonate server benchmark: ``python -m bench`` (see docs/benchmarks.md).

A load generator of our own (asyncio protocols, pre-encoded requests) that starts the server
under test, a no-storage ceiling server, a throwaway PostgreSQL cluster and the official
Python SDK as needed, measures over loopback for a bounded time and operation count, and
reports throughput, latency percentiles, errors, and server CPU and RSS.
"""
