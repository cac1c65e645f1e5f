"""The real model server for tests marked ``realserver`` (see llamaserver.py).

Not installed (``bash hack/install-llama.sh`` not run): the tests skip and say so, except
under ``CI=true``, where that is a failure (CI installs it through hack/setup.sh). Installed
but failing to start: always a failure, with the end of the server's log.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from llamaserver import Server, ServerUnavailable, check_installed, model_file, start_server


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """llama-cpp-python's server with Gemma 3 270M on 127.0.0.1, for the whole session."""
    try:
        check_installed()
        model = model_file()
    except ServerUnavailable as exc:
        if _in_ci():
            pytest.fail(f"realserver under CI: {exc}", pytrace=False)
        pytest.skip(f"realserver: {exc}")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with start_server(model, log_path=log) as server:
        yield server
