"""An in-process Kubernetes API for integration tests: kmock plus a fidelity layer.

See docs/testing.md for what is and is not emulated.
"""
