"""mcphub's benchmark: the MCP and gRPC call paths against the official SDK, on one machine.

Run `python -m tests.bench` (or `./dev bench`); `--smoke` for a quick check. docs/benchmark.md
says what each figure means and how the comparison is kept fair.
"""
