"""Real servers for the fleet tests: SeaweedFS (S3), PostgreSQL, the fleet service process."""

from __future__ import annotations

import pytest

from edgekiln.errors import DependencyError, UserError


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of Debian's on a free loopback port, in a temp dir; its URL
    (see devtools.servers.PostgresServer)."""
    from devtools.servers import PostgresServer

    server = PostgresServer()
    try:
        server.start()
    except (DependencyError, UserError) as exc:
        pytest.skip(exc.one_line())
    try:
        yield server.url
    finally:
        server.stop()
