"""The Kubernetes operator (kopf): BenchmarkRun reconciliation, phase gates, live status, results.

``main`` holds every kopf decorator; ``handlers`` the plain async logic; ``builders`` the pure
child manifests; ``k8s`` every API call and its error mapping; ``status`` the one status writer;
``gatebridge`` and ``snapshots`` the ZMQ sides (gates, live metrics). See docs/operator.md.
"""
