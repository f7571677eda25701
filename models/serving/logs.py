"""The server's log: one access line per request (with its request id) and, with ``serve.log_format: json``, every
line as a JSON object for log shippers (Loki, CloudWatch, Elasticsearch)."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

ACCESS = logging.getLogger("llmops.access")
ACCESS.setLevel(logging.WARNING)  # silent in-process (tests, the main job); ``llmops serve``'s log_config turns it on
ACCESS_FIELDS = ("request_id", "method", "path", "status", "seconds", "client")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}`` plus an access line's fields and any exception, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in ACCESS_FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def access(request_id: str, method: str, path: str, status: int, seconds: float, client: str) -> None:
    """One line per request, after its response (keys and bodies are never logged)."""
    ACCESS.info('%s "%s %s" %d %.3fs id=%s', client, method, path, status, seconds, request_id,
                extra={"request_id": request_id, "method": method, "path": path, "status": status,
                       "seconds": round(seconds, 4), "client": client})


def log_config(fmt: str, level: str = "info") -> dict:
    """uvicorn's ``log_config``: its loggers and ours to stderr, as text or JSON (uvicorn's own access log is off:
    ours carries the request id)."""
    formatter = ({"()": f"{__name__}.JsonFormatter"} if fmt == "json" else
                 {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["main"], "level": level.upper(), "propagate": False}
               for name in ("uvicorn", "uvicorn.error", "llmops", "llmops.access")}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"main": formatter},
            "handlers": {"main": handler}, "loggers": loggers}
