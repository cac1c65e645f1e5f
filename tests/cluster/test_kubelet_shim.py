"""testkubelet.runtime + shim: a container process in its own namespaces (needs root)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from testkubelet import runtime
from testkubelet.mountpoints import Mountpoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")

SCRIPT = """
import json, os, socket, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "hostname": socket.gethostname(),
       "hello": open(sys.argv[1] + "/hello").read(), "root": sorted(os.listdir("/root")),
       "devnull": os.path.exists("/dev/null")}
try:
    open("/etc/testkubelet-should-fail", "w")
    out["etc"] = "writable"
except OSError as e:
    out["etc"] = e.strerror
open(sys.argv[1] + "/written", "w").write("yes")
open("/dev/termination-log", "w").write("bye")
print(json.dumps(out), flush=True)
__import__("time").sleep(60)
"""


TARGET = "/run/testkubelet-volume"  # made by the shim inside the container's own /run


def spec(tmp_path: Path, argv: list[str]) -> dict:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "hello").write_text("hi")
    src.chmod(0o777)
    term = tmp_path / "term"
    term.write_bytes(b"")
    term.chmod(0o666)
    keep = sorted(
        {
            "/root/" + Path(p).relative_to("/root").parts[0]
            for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable))
            if Path(p).is_relative_to("/root")
        }
    )
    mounts = [
        {"kind": "dev", "target": "/dev"},
        {"kind": "tmpfs", "target": "/root", "options": "mode=755"},
        {"kind": "tmpfs", "target": "/run", "options": "mode=755"},
        *({"kind": "bind", "target": k, "source": k, "readonly": True} for k in keep),
        {"kind": "bind", "target": TARGET, "source": str(src), "readonly": False},
        {"kind": "bind", "target": "/dev/termination-log", "source": str(term), "readonly": False},
    ]
    for m in mounts:
        m.setdefault("source", "")
        m.setdefault("readonly", False)
        m.setdefault("options", "")
    return {
        "netns": None,
        "hostname": "tk-test",
        "readonly_root": True,
        "no_new_privs": True,
        "uid": 65532,
        "gid": 65532,
        "groups": [],
        "cwd": "/",
        "argv": argv,
        "env": {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"},
        "mounts": mounts,
    }


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def exists(path: Path) -> bool:
    return path.exists()


async def wait_for_line(path: Path, deadline: float = 20.0) -> str:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        text = read(path)
        if text.endswith("\n"):
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"no output in {path}: {read(path)}")


async def test_container_sees_its_mounts_identity_and_hostname(tmp_path):
    s = spec(tmp_path, [sys.executable, "-c", SCRIPT, TARGET])
    log = tmp_path / "0.log"
    inst = await runtime.start(s, spec_path=tmp_path / "0.json", log_path=log)
    assert inst.start_error == ""
    try:
        seen = json.loads(await wait_for_line(log))
        assert seen == {
            "uid": 65532,
            "gid": 65532,
            "hostname": "tk-test",
            "hello": "hi",
            "root": [
                Path(m["target"]).name for m in s["mounts"] if m["target"].startswith("/root/")
            ],
            "devnull": True,
            "etc": "Read-only file system",
        }
        assert read(tmp_path / "src" / "written") == "yes"
        assert read(tmp_path / "term") == "bye"
        # an exec probe joins the running container's namespaces
        code, out = await runtime.run_joined(
            {
                **{k: s[k] for k in ("env", "uid", "gid", "groups", "cwd")},
                "join_pid": inst.pid,
                "argv": [
                    sys.executable,
                    "-c",
                    "import os, socket; print(socket.gethostname(), "
                    f"os.getuid(), os.listdir({TARGET!r}))",
                ],
            },
            spec_path=tmp_path / "exec.json",
            limit=20,
        )
        assert code == 0
        assert out.split(" ", 2)[:2] == ["tk-test", "65532"]
        assert "hello" in out
    finally:
        inst.signal(signal.SIGTERM)
        assert await inst.wait() == 128 + signal.SIGTERM
    assert not exists(tmp_path / "0.json")  # the spec (env, maybe secrets) is removed
    assert "tk-test" not in read(Path("/etc/hostname"))
    assert not exists(Path(TARGET))  # nothing leaked to the host


async def test_a_command_that_cannot_be_executed_is_a_start_error(tmp_path):
    s = spec(tmp_path, ["no-such-command"])
    inst = await runtime.start(s, spec_path=tmp_path / "0.json", log_path=tmp_path / "0.log")
    assert inst.start_error == 'exec: "no-such-command": executable file not found in $PATH'
    assert await inst.wait() == 128


SURVIVOR = """
import os, sys, time
control, results = sys.argv[1], sys.argv[2]
while not os.path.exists(control + "/go"):
    time.sleep(0.02)
try:
    os.makedirs(results, exist_ok=True)  # as the load generator does with /results
    open(results + "/records.jsonl", "w").write("kept")
    print("ok", flush=True)
except OSError as e:
    print(e.strerror, flush=True)
"""


async def test_a_volume_stays_mounted_when_another_kubelet_releases_its_mount_point(tmp_path):
    """Two test kubelets (slots) on one host, both with pods mounting an emptyDir where the host
    has no directory: the first kubelet's last such pod ending must not take the mount point
    away from the other's running container (removing it would detach the container's mount;
    its read-only root then fails ``mkdir`` with EROFS)."""
    for name in ("slot-x", "slot-y"):
        (tmp_path / name).mkdir()
    x, y = (
        Mountpoints(tmp_path / "host" / "mountpoints.json", str(tmp_path / name))
        for name in ("slot-x", "slot-y")
    )
    results = tmp_path / "hostroot" / "results"
    emptydir = tmp_path / "emptydir"
    emptydir.mkdir()
    x.ensure("pod-x", str(results), is_dir=True)
    y.ensure("pod-y", str(results), is_dir=True)
    s = spec(tmp_path, [sys.executable, "-c", SURVIVOR, TARGET, str(results)])
    s["uid"] = s["gid"] = 0  # tmp_path's parents are root's alone
    s["mounts"].append(
        {
            "kind": "bind",
            "target": str(results),
            "source": str(emptydir),
            "readonly": False,
            "options": "",
        }
    )
    log = tmp_path / "0.log"
    inst = await runtime.start(s, spec_path=tmp_path / "0.json", log_path=log)
    assert inst.start_error == ""
    x.release("pod-x")  # mounted in pod-y's container: must stay
    (tmp_path / "src" / "go").write_text("")
    try:
        assert (await wait_for_line(log)).strip() == "ok"
        assert read(emptydir / "records.jsonl") == "kept"
    finally:
        inst.signal(signal.SIGKILL)
        await inst.wait()
    y.release("pod-y")
    assert not exists(results.parent)
