"""``llmops reports``: a read-only HTTP server for the reports in a local store, so artifact links open from another
host (set ``LLMOPS_REPORT_BASE_URL`` to where it is reachable). Only report files are served: model weights,
datasets and the traffic log (user data) are not, whatever the path asks for."""
from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

REPORT_SUFFIXES = frozenset({".html", ".md", ".png", ".svg", ".json", ".txt", ".csv"})
SERVED_PREFIXES = ("monitoring/", "runs/", "models/")  # drift reports, loss curves and evaluations, model cards
MEDIA_TYPES = {".md": "text/markdown; charset=utf-8", ".json": "application/json"}


def reports_app(root: Path) -> Starlette:
    """The app serving ``GET /<key>`` for report files under the store folder ``root``."""
    root = Path(root).resolve()

    async def serve(request: Request) -> Response:
        key = request.path_params["key"]
        path = (root / key).resolve()
        allowed = (path.is_relative_to(root) and key.startswith(SERVED_PREFIXES) and path.suffix in REPORT_SUFFIXES
                   and path.name != "traffic" and "/traffic/" not in f"/{key}")
        if not allowed or not path.is_file():
            return PlainTextResponse(f"no report at {key}", status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix))

    async def index(_: Request) -> Response:
        return PlainTextResponse(f"llmops reports from {root}: GET /monitoring/<model>/<window>/report.html, ...")

    return Starlette(routes=[Route("/", index), Route("/{key:path}", serve)])
