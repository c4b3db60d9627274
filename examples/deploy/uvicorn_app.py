"""An ASGI app run by ``uvicorn --workers 3``: each worker starts its elector at lifespan start-up.

    cd examples/deploy
    uvicorn --workers 3 uvicorn_app:app

uvicorn starts its workers with the ``spawn`` method: each is a fresh interpreter that imports
this module itself, so nothing is inherited; the supervisor (the process you started) never
imports it. Every worker serves requests and runs the scheduler; only the worker whose elector
leads runs ``nightly_report``. Lifespan shutdown (SIGTERM, Ctrl+C) releases the lease.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from jobs import make_elector, start_scheduler

from singleton_jobs import get_default_elector

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        stop_scheduler = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                stop_scheduler = start_scheduler(make_elector())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if stop_scheduler is not None:
                    stop_scheduler()  # joins the scheduler thread: at most one job run
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        elector = get_default_elector()
        leader = elector.leader if elector is not None else None
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body",
                    "body": f"worker {os.getpid()}, leader {leader}\n".encode()})
