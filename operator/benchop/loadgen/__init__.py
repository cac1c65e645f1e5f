"""The load-generator worker (``benchop loadgen``): the program a Job's pods run.

Modules, one concept each:

- ``prompts``: seeded synthetic prompts; how tokens are counted.
- ``lengths``: token lengths drawn from a distribution, seeded, in blocks.
- ``tokenizer``: word or ``tokenizer.json`` counting; synthetic text of an exact length.
- ``datasets``: ShareGPT and JSONL rows read into conversations; the workers' row order.
- ``workload``: what each request asks (synthetic, shared prefixes, dataset, multi-turn).
- ``sse``: byte-level parser of the OpenAI streaming response (pure).
- ``trigger``: ``SendTrigger``, when an open-loop request leaves.
- ``http``: keep-alive HTTP/1.1 connections (asyncio protocols, llhttp).
- ``client``: the streaming client; one request -> one record.
- ``records``: the per-request record and how records become metrics (pure).
- ``timers``: fine timers (a Linux timerfd in the loop, else a helper thread).
- ``load``: fixed concurrency (closed loop) and request rate (open loop).
- ``checkpoint``: ``records.jsonl`` appended off the event loop; resume.
- ``gate``: asking the gate coordinator for START/END (the phase barrier).
- ``snapshots``: LIVE/DRAINING/COMPLETE snapshots, final files.
- ``worker``: phases (warmup, profiling), the whole worker as ``run_worker``.
- ``command``: the ``benchop loadgen`` CLI.
"""

import os as _os

# The metrics fold computes a float dot product (numpy ``@``), which OpenBLAS runs on a
# thread pool whose workers then spin-wait: measured at 60-80 % of a second core and half
# the worker's req/s. A load generator never gains from BLAS threads: one thread, unless
# the user set it. Effective only when numpy is not imported yet (``benchop loadgen``).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
