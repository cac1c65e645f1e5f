"""The slice of the kubelet API that ``kubectl logs`` needs (``/containerLogs``), over TLS.

The apiserver proxies ``pods/log`` to ``https://<node InternalIP>:<daemonEndpoints port>``; each
node of this process has its own port (10250, 10251, ...). The serving certificate is signed by
the cluster CA for the host IP (an apiserver started with ``--kubelet-certificate-authority``
accepts it): see :func:`_serving_cert`.
Client certificates are not checked; exec, attach and port-forward are not served (501).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from pathlib import Path

from aiohttp import web

from .config import Config

log = logging.getLogger(__name__)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _serving_cert(state_dir: Path, node: str, ip: str) -> tuple[Path, Path]:
    """``pki/kubelet.crt`` if kube-up made one; else one signed here with the cluster CA
    (``pki/ca.key``: the apiserver verifies kubelets against that CA); else self-signed."""
    crt, key = state_dir / "pki" / "kubelet.crt", state_dir / "pki" / "kubelet.key"
    if crt.exists() and key.exists():
        return crt, key
    pki = state_dir / "kubelet" / "pki"
    crt, key = pki / f"{node}.crt", pki / f"{node}.key"
    if crt.exists() and key.exists():
        return crt, key
    pki.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = state_dir / "pki" / "ca.crt", state_dir / "pki" / "ca.key"
    ext = pki / f"{node}.ext"
    ext.write_text(
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{ip},DNS:{node}\n"
    )
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    subject = ("-subj", f"/O=system:nodes/CN=system:node:{node}")
    if ca_crt.exists() and ca_key.exists():
        csr = pki / f"{node}.csr"
        _openssl("req", "-new", *curve, "-keyout", str(key), "-out", str(csr), *subject)
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_crt),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-CAserial",
            str(pki / "ca.srl"),
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )
        csr.unlink()
    else:
        _openssl(
            "req",
            "-x509",
            *curve,
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "3650",
            *subject,
            "-addext",
            f"subjectAltName=IP:{ip},DNS:{node}",
        )
    key.chmod(0o600)
    return crt, key


def container_logs(
    pods_dir: Path, ns: str, pod: str, container: str, previous: bool
) -> Path | None:
    """The log file of the current (or previous) run of a container of the newest pod named
    ``ns/pod``."""
    dirs = sorted(pods_dir.glob(f"{ns}_{pod}_*/{container}"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        return None
    logs = sorted(dirs[-1].glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if previous:
        return logs[-2] if len(logs) >= 2 else None
    return logs[-1] if logs else None


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


class LogServer:
    def __init__(self, cfg: Config, node: str, port: int) -> None:
        self.cfg = cfg
        self.node = node
        self.port = port
        self.pods_dir = cfg.kubelet_dir / "pods"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        crt, key = await asyncio.to_thread(
            _serving_cert, self.cfg.state_dir, self.node, self.cfg.host_ip
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._logs)
        app.router.add_route("*", "/{tail:.*}", self._unsupported)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host_ip, self.port, ssl_context=ctx)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _unsupported(self, _: web.Request) -> web.Response:
        return web.Response(status=501, text="not implemented by the test kubelet\n")

    async def _logs(self, req: web.Request) -> web.StreamResponse:
        q = req.query
        path = container_logs(
            self.pods_dir,
            req.match_info["ns"],
            req.match_info["pod"],
            req.match_info["container"],
            q.get("previous") == "true",
        )
        if path is None:
            return web.Response(status=404, text="container not found\n")
        data = await asyncio.to_thread(path.read_bytes)
        if q.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(q["tailLines"]) :]) if int(q["tailLines"]) else b""
        if q.get("limitBytes"):
            data = data[: int(q["limitBytes"])]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(req)
        await resp.write(data)
        if q.get("follow") == "true" and not q.get("limitBytes"):
            await self._follow(resp, path, path.stat().st_size)
        await resp.write_eof()
        return resp

    async def _follow(self, resp: web.StreamResponse, path: Path, offset: int) -> None:
        """Stream what gets appended while the container runs (its .pid file exists)."""
        pid_file = path.with_suffix(".pid")
        while True:
            running = pid_file.exists()
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                await resp.write(chunk)
            elif not running:
                return
            await asyncio.sleep(0.5)
