"""gatewayd.static: the built client at /app/, everything else untouched, no directory listings."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from klein import Klein
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from gatewayd.config import Config
from gatewayd.static import DEV_DIST, app_dir, static_resource, with_app


def _fallback() -> Any:
    app = Klein()

    @app.route("/api/v1/public/gateway-keys")
    def keys(request: Request) -> bytes:
        return b'{"keys": []}'

    @app.route("/")
    def root(request: Request) -> bytes:
        return b"root"

    return app.resource()


class Served:
    def __init__(self, port: Any, pool: HTTPConnectionPool) -> None:
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.pool = pool

    async def get(self, path: str) -> tuple[int, bytes, Any]:
        response = await treq.get(self.url + path, pool=self.pool, allow_redirects=False)
        return response.code, await response.content(), response.headers


@pytest.fixture
def dist(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "dist" / "assets").mkdir(parents=True)
    (tmp_path / "dist" / "index.html").write_text("<title>app</title>")
    (tmp_path / "dist" / "app.js").write_text("console.log(1)")
    (tmp_path / "dist" / "assets" / "x.css").write_text("body{}")
    return tmp_path / "dist"


@pytest_twisted.async_yield_fixture
async def served(dist: pathlib.Path) -> AsyncIterator[Served]:
    config = Config().replace(server={"static_dir": str(dist)})
    port: Any = reactor.listenTCP(0, cast(Any, Site(with_app(_fallback(), config))), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield Served(port, pool)
    finally:
        await port.stopListening()
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_app_files(served: Served) -> None:
    code, body, headers = await served.get("/app/")
    assert (code, body) == (200, b"<title>app</title>")
    assert headers.getRawHeaders("content-type") == ["text/html"]
    code, body, headers = await served.get("/app/app.js")
    assert (code, body) == (200, b"console.log(1)")
    assert "javascript" in headers.getRawHeaders("content-type")[0]
    code, body, _ = await served.get("/app/assets/x.css")
    assert (code, body) == (200, b"body{}")


@pytest_twisted.ensureDeferred
async def test_no_listing_no_escape(served: Served) -> None:
    code, body, _ = await served.get("/app/assets/")
    assert code == 404 and b"x.css" not in body
    assert (await served.get("/app/missing.js"))[0] == 404
    assert (await served.get("/app/../pyproject.toml"))[0] == 404
    assert (await served.get("/app/%2e%2e/pyproject.toml"))[0] in (400, 404)


@pytest_twisted.ensureDeferred
async def test_app_without_slash_redirects(served: Served) -> None:
    code, _, headers = await served.get("/app")
    assert code in (301, 302)
    assert headers.getRawHeaders("location")[0].endswith("/app/")


@pytest_twisted.ensureDeferred
async def test_other_paths_reach_the_fallback_whole(served: Served) -> None:
    assert (await served.get("/api/v1/public/gateway-keys"))[:2] == (200, b'{"keys": []}')
    assert (await served.get("/"))[:2] == (200, b"root")
    assert (await served.get("/application"))[0] == 404  # not a prefix match on "app"


def test_app_dir_choice(dist: pathlib.Path) -> None:
    assert app_dir(Config()) is None
    assert app_dir(Config().replace(server={"static_dir": str(dist)})) == dist
    dev = Config().replace(dev={"enabled": True})
    assert app_dir(dev) == (DEV_DIST if (DEV_DIST / "index.html").is_file() else None)
    base = _fallback()
    assert with_app(base, Config()) is base
    assert IResource.providedBy(static_resource(dist))
