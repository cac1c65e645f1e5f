"""Container shim: set up one container's namespaces, then exec its command.

Run as ``python -I shim.py SPEC.json`` (standalone: imports only the standard library, so the
interpreter starts fast and nothing of the kubelet leaks in). The kubelet starts it in a new
session with stdout/stderr on the container's log file; after ``execve`` the container's process
*is* this process, so its pid, signals and exit status are the container's.

``run`` spec: enter the pod's network namespace; unshare mount, UTS and IPC namespaces; make every
mount private; open every bind source (``O_PATH``) before anything covers it; perform the mounts
(parents first; a minimal /dev; tmpfs masks; volumes; hosts, resolv.conf, termination log);
read-only remounts (``readOnly`` volumes; with ``readonly_root`` every other mount but /proc,
/sys, /dev and writable volumes); set the hostname; drop to uid/gid/groups (no_new_privs);
chdir; exec.

``join`` spec (exec probes, preStop hooks): enter the namespaces of a running container's
process (``join_pid``), drop privileges, chdir, exec.

The kubelet passes a pipe's write end as the second argument: it is close-on-exec, so the kubelet
reads EOF exactly when the command has been exec'd (the container is running, probes may start);
a failure before exec writes the reason into the pipe and exits 128 (the runtime's
``StartError``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import stat
import sys
import warnings  # noqa: F401  (os.execvpe imports it lazily: after setns the stdlib may be gone)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_NO_NEW_PRIVS = 38
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
FLAG_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)


class StartError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise StartError(f"{what}: {os.strerror(err)}")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"{what} {target}",
    )


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def _ensure(target: str, is_dir: bool) -> None:
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_dir:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _bind(fd: int, target: str) -> None:
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    _ensure(target, is_dir)
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None, "bind mount on")


def _mountinfo() -> list[tuple[str, set[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = fields[4].encode().decode("unicode_escape") if "\\" in fields[4] else fields[4]
            out.append((path, set(fields[5].split(","))))
    return out


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _remount_ro(target: str, options: set[str]) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name, flag in FLAG_OPTIONS.items():
        if name in options:
            flags |= flag
    _mount(None, target, None, flags, None, "read-only remount of")


def _make_dev(dev_fds: dict[str, int]) -> None:
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k", "mount tmpfs")
    for name in DEVICES:
        if name in dev_fds:
            _bind(dev_fds[name], f"/dev/{name}")
    if "pts" in dev_fds:
        _bind(dev_fds["pts"], "/dev/pts")
        os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    _mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k", "mount shm")
    os.symlink("/proc/self/fd", "/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")


def setup(spec: dict) -> None:
    if spec.get("netns"):
        _setns(spec["netns"], CLONE_NEWNET)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None, "make-rprivate")
    mounts = spec["mounts"]
    fds: dict[int, int] = {}
    for i, m in enumerate(mounts):
        if m["kind"] == "bind":
            try:
                fds[i] = os.open(m["source"], os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise StartError(
                    f"mount source {m['source']} for {m['target']}: {e.strerror}"
                ) from e
    dev_fds = {}
    for name in (*DEVICES, "pts"):
        with contextlib.suppress(OSError):
            dev_fds[name] = os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
    for i, m in enumerate(mounts):
        if m["kind"] == "dev":
            _make_dev(dev_fds)
        elif m["kind"] == "tmpfs":
            _ensure(m["target"], True)
            _mount(
                "tmpfs",
                m["target"],
                "tmpfs",
                MS_NOSUID | MS_NODEV,
                m.get("options") or None,
                "mount tmpfs on",
            )
        else:
            _bind(fds[i], m["target"])
    info = {path: opts for path, opts in _mountinfo()}
    for m in mounts:
        if m["kind"] == "bind" and m["readonly"]:
            _remount_ro(m["target"], info.get(os.path.realpath(m["target"]), set()))
    if spec.get("readonly_root"):
        writable = [m["target"] for m in mounts if m["kind"] == "bind" and not m["readonly"]]
        writable = [os.path.realpath(t) for t in writable] + ["/proc", "/sys", "/dev"]
        for path, opts in _mountinfo():
            if "ro" in opts or any(_under(path, w) for w in writable):
                continue
            with contextlib.suppress(StartError):  # a shadowed mount: invisible anyway
                _remount_ro(path, opts)
    if spec.get("hostname"):
        socket.sethostname(spec["hostname"])


def join(spec: dict) -> None:
    pid = spec["join_pid"]
    for ns, flag in (
        ("net", CLONE_NEWNET),
        ("uts", CLONE_NEWUTS),
        ("ipc", CLONE_NEWIPC),
        ("mnt", CLONE_NEWNS),
    ):
        _setns(f"/proc/{pid}/ns/{ns}", flag)


def drop_privileges(spec: dict) -> None:
    if spec.get("no_new_privs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    os.setgroups(spec.get("groups") or [])
    os.setgid(spec.get("gid", 0))
    os.setuid(spec.get("uid", 0))


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    argv = spec["argv"]
    sync_fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if sync_fd is not None:
        os.set_inheritable(sync_fd, False)  # closed by exec: the kubelet sees EOF
    try:
        if spec.get("join_pid"):
            join(spec)
        else:
            setup(spec)
        drop_privileges(spec)
        try:
            os.chdir(spec.get("cwd") or "/")
        except OSError as e:
            raise StartError(
                f"chdir to cwd ({spec.get('cwd')!r}) set in config.json failed: {e.strerror}"
            ) from e
        if not argv:
            raise StartError("no command specified")
        try:
            os.execvpe(argv[0], argv, spec["env"])
        except FileNotFoundError as e:
            where = "in $PATH" if "/" not in argv[0] else ""
            raise StartError(f'exec: "{argv[0]}": executable file not found {where}'.strip()) from e
        except OSError as e:
            raise StartError(f'exec: "{argv[0]}": {e.strerror}') from e
    except (StartError, OSError) as e:
        msg = str(e)
        if sync_fd is not None:
            os.write(sync_fd, msg.encode())
        print(f"testkubelet shim: {msg}", file=sys.stderr)
        sys.exit(128)


if __name__ == "__main__":
    main()
