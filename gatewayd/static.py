"""The browser client's built files (web/dist) served at ``/app/``.

``static_resource`` serves one folder: ``index.html`` for the folder itself,
never a directory listing. ``with_app`` puts it at ``/app/`` in front of the
gateway's other web resource (the public REST surface), which keeps every
other path exactly as before.
"""

from __future__ import annotations

import pathlib
from typing import Any

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File

from gatewayd.config import Config

APP_SEGMENT = b"app"
# The source tree's build output; dev mode serves it when it has been built.
DEV_DIST = pathlib.Path(__file__).resolve().parents[1] / "web" / "dist"


class _Files(File):
    """``File`` that answers 404 where it would list a directory."""

    indexNames = ["index.html"]

    def directoryListing(self) -> IResource:
        return notFound()


def static_resource(path: str | pathlib.Path) -> IResource:
    """Serve the files under ``path``; a folder answers with its ``index.html`` or 404."""
    return _Files(str(path))


def app_dir(config: Config) -> pathlib.Path | None:
    """The folder to serve at ``/app/``: ``server.static_dir``, else web/dist in dev mode if built."""
    if config.server.static_dir:
        return pathlib.Path(config.server.static_dir)
    if config.dev.enabled and (DEV_DIST / "index.html").is_file():
        return DEV_DIST
    return None


class _Mount(Resource):
    """``/app/...`` to the static files; every other path to ``fallback``, untouched."""

    def __init__(self, fallback: IResource, app: IResource) -> None:
        super().__init__()
        self._fallback = fallback
        self._app = app

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        if path == APP_SEGMENT:
            return self._app
        # Give the segment back: the fallback (a klein leaf) routes on the whole path.
        assert request.prepath is not None and request.postpath is not None
        request.postpath.insert(0, request.prepath.pop())
        return self._fallback

    def render(self, request: Request) -> Any:  # only reached for an empty path
        return self._fallback.render(request)


def with_app(resource: IResource, config: Config) -> IResource:
    """``resource`` with the browser client mounted at ``/app/`` when there is one to serve."""
    folder = app_dir(config)
    if folder is None:
        return resource
    return _Mount(resource, static_resource(folder))
