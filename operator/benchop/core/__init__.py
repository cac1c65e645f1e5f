"""What the operator and local mode share: pure rules, no kopf, ZMQ or aiohttp.

- ``names``: the API group, versions, kinds, plurals, label and annotation keys, the
  finalizer, terminal phases and the object names derived from a run's.
- ``selectors``: the one label-selector renderer (``labelSelector`` query strings).
- ``lifecycle``: status transitions of runs and Experiments, ``is_terminal``, the merge diff.
- ``results``: merging worker snapshots, choosing the final ones, ``status.results``,
  the verdict, the workers' termination messages.
- ``gaterecords``: a closed gate (``GateOutcome``) and its record in ``status.gates``.
- ``gpuwindow``: GPU numbers of the profiling window from the START/END baseline acks.
- ``children``: an Experiment's child runs and the sweep plan.
- ``rollup``: an Experiment's ``status.metrics``, computed and read back from cache.

``benchop.operator`` and ``benchop.local`` are shells around these modules;
tests/unit/test_layers.py checks that nothing here imports kopf, zmq, aiohttp or the
operator, and that the packages' imports have no cycle.
"""
