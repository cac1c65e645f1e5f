"""testkubelet.images: which references are the project's image; the pull failure message."""

from __future__ import annotations

from testkubelet.images import Image, Images, full_reference, pull_error, repository


def test_repository_normalization():
    assert repository("ghcr.io/benchop/benchop:v0.3") == "ghcr.io/benchop/benchop"
    assert repository("ghcr.io/benchop/benchop@sha256:abc") == "ghcr.io/benchop/benchop"
    assert repository("localhost:5000/x/y:1") == "localhost:5000/x/y"
    assert repository("busybox") == "docker.io/library/busybox"
    assert repository("library/busybox:1") == "docker.io/library/busybox"
    assert full_reference("busybox") == "docker.io/library/busybox:latest"
    assert full_reference("ghcr.io/a/b@sha256:abc") == "ghcr.io/a/b@sha256:abc"


def test_lookup_matches_any_tag_of_a_known_repository_only():
    img = Image(repository="ghcr.io/benchop/benchop", entrypoint=("/usr/bin/benchop",))
    images = Images({"ghcr.io/benchop/benchop": img})
    assert images.lookup("ghcr.io/benchop/benchop:dev") is img
    assert images.lookup("ghcr.io/benchop/benchop") is img
    assert images.lookup("ghcr.io/benchop/other:dev") is None
    assert images.lookup("busybox") is None
    assert img.image_id().startswith("ghcr.io/benchop/benchop@sha256:")


def test_pull_error_reads_like_containerd():
    msg = pull_error("busybox:1.36")
    assert msg.startswith(
        "rpc error: code = NotFound desc = failed to pull and unpack image "
        '"docker.io/library/busybox:1.36"'
    )
