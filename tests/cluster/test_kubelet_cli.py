"""testkubelet.__main__: the command line kube-up.sh uses."""

from __future__ import annotations

from pathlib import Path

from testkubelet.__main__ import _nodes, _root_masks, parse_args


def test_nodes_with_gpus_in_either_spelling():
    ns = parse_args(
        ["--node", "benchop-gpu:2", "--node", "benchop-cpu", "--node", "x", "--gpus", "4"]
    )
    nodes = _nodes(ns.node, ns.gpus)
    assert [(n.name, n.gpus, n.index) for n in nodes] == [
        ("benchop-gpu", 2, 1),
        ("benchop-cpu", 0, 2),
        ("x", 4, 3),
    ]


def test_masks_hide_root_but_keep_the_interpreter_and_hide_the_state_dir():
    masks = _root_masks(["/root/.pyenv/versions/3.11.7", "/usr/lib/python3"], Path("/tmp/kube"))
    assert masks == {"/root": ["/root/.pyenv"], "/run": [], "/tmp/kube": []}
