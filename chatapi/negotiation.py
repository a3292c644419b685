"""Content negotiation for endpoints that stream: a streaming Accept header never turns an answer into a 406."""

from __future__ import annotations

from collections.abc import Sequence

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class StreamFriendlyNegotiation(DefaultContentNegotiation):
    """`Accept: text/event-stream` (or `text/plain`) asks for a stream; whatever is not streamed,
    errors included, is answered with the first renderer (JSON)."""

    # DRF passes the view's list of renderers; djangorestframework-stubs say any Iterable (hence the ignore).
    def select_renderer(  # type: ignore[override]
        self, request: Request, renderers: Sequence[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        if (
            format_suffix is None
            and request.META.get("HTTP_ACCEPT", "*/*") == "*/*"
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            # What nearly every API client sends: DRF's answer, the first renderer, without parsing media types.
            return renderers[0], renderers[0].media_type
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
