"""The load-generator worker (``benchop loadgen``): the program a Job's pods run.

Modules, one concept each:

- ``prompts``: seeded synthetic prompts; how tokens are counted.
- ``sse``: byte-level parser of the OpenAI streaming response (pure).
- ``client``: the aiohttp streaming client; one request -> one record.
- ``records``: the per-request record and how records become metrics (pure).
- ``load``: fixed concurrency (closed loop) and request rate (open loop).
- ``checkpoint``: ``records.jsonl`` appended off the event loop; resume.
- ``gate``: asking the gate coordinator for START/END.
- ``snapshots``: LIVE/DRAINING/COMPLETE snapshots, final files.
- ``worker``: phases (warmup, profiling), the whole worker as ``run_worker``.
- ``command``: the ``benchop loadgen`` CLI.
"""
