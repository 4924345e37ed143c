"""`modelplane-server bench` (`command`): a load generator for any OpenAI-compatible endpoint
(ours or another).

It imports no torch (only httpx and the standard library; matplotlib only for `--plot`), so it runs
anywhere the server's CLI installs. The metrics follow vLLM's `benchmark_serving.py`
(docs: /work/shared/notes/servers.md §4.2):

- TTFT: request sent -> first content chunk (streaming only; client side).
- TPOT: (E2E - TTFT) / (output tokens - 1), per request with more than one output token.
- ITL: every gap between content chunks, pooled over all requests.
- E2EL: request sent -> response complete.
- Throughput: completed requests, output tokens and (prompt + output) tokens per second of the run.
- Goodput: completed requests per second that met every given SLO.

Token counts come from the server's `usage` (when streaming, the request asks for it with
`stream_options.include_usage`), never from re-tokenising the text.

Load is either closed-loop at a fixed concurrency (N workers, each sends its next request when the
previous one ends) or open-loop Poisson arrivals at a rate, optionally capped by a concurrency
limit. A closed loop may ramp up: its N workers then start evenly over `ramp_up_s` instead of all
at t=0, so a run measures a steady state rather than one synchronised burst (the burst is what
`ramp_up_s=0` measures). Every run is bounded by a request count and a total time; requests still
in flight at the time limit are cancelled and counted as `unfinished`.
"""
