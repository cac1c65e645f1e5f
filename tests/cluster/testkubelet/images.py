"""Which "images" this kubelet can run, and how a pull of any other image fails.

There is no registry and no image store: the project's image (any tag or digest of the configured
repositories) is the local ``benchop`` entrypoint with the Dockerfile's ENV, WORKDIR and USER.
Every other image fails the way containerd reports a reference that does not exist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Image:
    """What a container image contributes to a process (Dockerfile ENTRYPOINT/CMD/ENV/...)."""

    repository: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    uid: int = 0
    gid: int = 0

    def image_id(self) -> str:
        """A stable stand-in for the digest ``status.containerStatuses[].imageID`` reports."""
        digest = hashlib.sha256("\0".join([self.repository, *self.entrypoint]).encode()).hexdigest()
        return f"{self.repository}@sha256:{digest}"


def repository(image: str) -> str:
    """The normalized repository of a reference, without tag or digest.

    >>> repository("ghcr.io/benchop/benchop:v1")
    'ghcr.io/benchop/benchop'
    >>> repository("busybox")
    'docker.io/library/busybox'
    """
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    parts = name.split("/")
    if len(parts) == 1:
        return f"docker.io/library/{name}"
    if "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
        return f"docker.io/{name}"
    return name


def full_reference(image: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest`` (as containerd names it)."""
    repo = repository(image)
    if "@" in image:
        return f"{repo}@{image.split('@', 1)[1]}"
    tail = image.rsplit("/", 1)[-1]
    tag = tail.rsplit(":", 1)[1] if ":" in tail else "latest"
    return f"{repo}:{tag}"


def pull_error(image: str) -> str:
    """The message containerd gives for an image that does not exist (plus why, here)."""
    ref = full_reference(image)
    return (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
        f'failed to resolve reference "{ref}": {ref}: not found '
        "(the test kubelet runs only the project's image)"
    )


class Images:
    """The images this node "has": ``Images({repo: Image}).lookup(ref)`` -> Image or None."""

    def __init__(self, images: dict[str, Image]) -> None:
        self._by_repo = {repository(k): v for k, v in images.items()}

    def lookup(self, image: str) -> Image | None:
        return self._by_repo.get(repository(image))
