"""The join page: `/` and `/s/{slug}` serve api/static/index.html; `/static/` serves api/static/, and
`/vendor/` the livekit-client browser bundle from node_modules when it is installed."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from api.errors import ApiError

logger = logging.getLogger("roomscribe.api.static")

ROOT = Path(__file__).resolve().parents[1]
STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = ROOT / "node_modules" / "livekit-client" / "dist"


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise ApiError(404, "not_found", "the join page is not installed")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/s/{slug}", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, name="static")
    if VENDOR_DIR.is_dir():
        app.router.add_static("/vendor/", VENDOR_DIR, name="vendor")
    else:
        logger.info(
            "livekit-client bundle not installed; /vendor/ not served", extra={"path": str(VENDOR_DIR)}
        )
