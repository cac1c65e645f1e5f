"""A test kubelet: runs the pods bound to its Nodes as local processes (see README.md)."""
