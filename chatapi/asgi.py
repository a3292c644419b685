"""ASGI entry point: `uvicorn chatapi.asgi:application`.

Django's own ASGI handler serves every request. Around it, the ASGI lifespan sets a worker process up
when it starts and puts it back when it stops (chatapi.worker).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from django.core.asgi import get_asgi_application

from chatapi.env import exit_on_setting_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")
logger = logging.getLogger(__name__)

with exit_on_setting_error():
    django_application = get_asgi_application()

from chatapi.worker import worker_started, worker_stopping  # noqa: E402  (needs the settings)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await worker_started()
            except Exception as exc:  # the server says so and stops, rather than run without its set-up
                logger.exception("The worker could not start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await worker_stopping()
            except Exception as exc:
                logger.exception("The worker did not stop cleanly")
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return
