"""The real model server for tests marked ``realserver`` (see llamaserver.py).

Not installed (``bash hack/install-llama.sh`` not run): the tests skip and say so, except
under ``CI=true``, where that is a failure (CI installs it through hack/setup.sh). Installed
but failing to start: always a failure, with the end of the server's log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llamaserver import Server, server_or_skip


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """llama-cpp-python's server with Gemma 3 270M on 127.0.0.1, for the whole session."""
    with server_or_skip(tmp_path_factory.mktemp("llama") / "server.log") as server:
        yield server
