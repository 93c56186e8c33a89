"""The dashboard's files: the page, its script and style, and the vendored uPlot.

Everything ships inside the package (`server/static/`), so the page works on
a LAN with no internet. Only the files listed there are served, read once.
"""

from __future__ import annotations

import functools
from importlib import resources

INDEX = "index.html"
STATIC_PREFIX = "/static/"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@functools.cache
def _files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files(__package__) / "static"
    found = {}
    for entry in folder.iterdir():
        kind = _TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and kind is not None:
            found[entry.name] = (entry.read_bytes(), kind)
    return found


def asset(path: str) -> tuple[bytes, str] | None:
    """The body and content type for a request path, or None if it is not ours."""
    if path in ("/", "/" + INDEX):
        name = INDEX
    elif path.startswith(STATIC_PREFIX):
        name = path[len(STATIC_PREFIX):]
    else:
        return None
    return _files().get(name)
