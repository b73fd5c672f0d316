"""Run the app under uvicorn: one process, or ``workers`` processes sharing the socket.

One process (the default): the model is loaded once, before the socket opens; SIGHUP or ``POST /admin/reload`` loads
the newest run beside it and swaps; SIGTERM or Ctrl-C stops accepting connections and lets in-flight requests finish
(up to ``GRACEFUL_SHUTDOWN_S``).

``workers > 1``: uvicorn's supervisor starts that many processes, each loading its own copy of the model (memory
grows with N). A reload then means replacing the processes: SIGHUP to the supervisor makes uvicorn start a new
worker, wait until it is ready, then stop an old one, one at a time; a new worker whose model fails validation does
not start, and uvicorn keeps the old one and stops the roll. SIGHUP sent to a single worker reloads that worker in
place, and ``POST /admin/reload`` forwards SIGHUP to the supervisor.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from embedrec.serve.app import ServeSettings, create_app, settings_to_env
from embedrec.serve.state import ModelHolder

WORKER_START_S = 300
"""How long uvicorn's supervisor waits for a new worker to load its model before it gives up the roll (its default,
5 s, is less than loading a model takes on a busy machine, so every SIGHUP roll was abandoned)."""
GRACEFUL_SHUTDOWN_S = 30
"""How long SIGTERM waits for in-flight requests before closing them: far above any request's time."""


def run_server(
    holder: ModelHolder | None,
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Serve until stopped. ``holder`` is the loaded model (one process); with workers > 1 it is dropped here and
    every worker loads its own (the caller loaded one first only to fail early with a clear message)."""
    import uvicorn

    common: dict[str, Any] = dict(
        host=host,
        port=port,
        access_log=access_log,
        log_level=log_level,
        log_config=_log_config(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    if settings.workers <= 1:
        if holder is None:
            holder = ModelHolder(settings.source)
        uvicorn.run(create_app(holder, settings), **common)
        return
    del holder
    os.environ.update(settings_to_env(settings))
    uvicorn.run(
        "embedrec.serve.app:app_from_env",
        factory=True,
        workers=settings.workers,
        timeout_worker_healthcheck=WORKER_START_S,
        **common,
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging setup plus the ``embedrec.serve`` logger (reloads, refusals, errors) on the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["embedrec.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
