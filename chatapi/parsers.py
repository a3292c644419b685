"""Form and multipart parsers that refuse what they cannot read, instead of guessing.

DRF's (through Django's) decode text that is not valid in the request's charset with replacement
characters or as Latin-1, and take a multipart body that does not match its boundary for an empty
form. Either way the service would store something other than what the client meant; these answer
`400` instead.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import QueryDict
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, DataAndFiles, FormParser, MultiPartParser


def _encoding(parser_context: Mapping[str, Any] | None) -> str:
    return (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET


def _decoded(raw: bytes, encoding: str, what: str) -> str:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise ParseError(f"The {what} is not valid {encoding} text.") from None


class StrictFormParser(FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = _encoding(parser_context)
        text = _decoded(stream.read() if stream is not None else b"", encoding, "form body")
        try:
            # Percent-escapes must decode too: `%FF` is no more a character than a raw 0xFF byte.
            parse_qsl(text, keep_blank_values=True, encoding=encoding, errors="strict")
        except UnicodeDecodeError:
            raise ParseError(f"The form body holds percent-escapes that are not valid {encoding} text.") from None
        except ValueError:
            pass  # too many fields: QueryDict says so in Django's own words
        return QueryDict(text, encoding=encoding)


class StrictMultiPartParser(MultiPartParser):
    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> DataAndFiles:
        raw = stream.read() if stream is not None else b""
        boundary = parse_header_parameters(media_type or "")[1].get("boundary", "")
        if not boundary:
            raise ParseError("The multipart body has no boundary in its Content-Type.")
        if f"--{boundary}--".encode("latin-1", "replace") not in raw:
            raise ParseError("The multipart body is malformed: it does not end with its closing boundary.")
        # The API takes text fields only (no file uploads), so the whole body must be text.
        _decoded(raw, _encoding(parser_context), "multipart body")
        return super().parse(io.BytesIO(raw), media_type, parser_context)


def spool(source: IO[bytes], *, limit: int) -> IO[bytes]:
    """`source` copied to a temporary file (in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, then on disk),
    rewound; more than `limit` bytes is RequestDataTooBig (a 413)."""
    target = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115
    size = 0
    while block := source.read(1 << 20):
        size += len(block)
        if size > limit:
            target.close()
            raise RequestDataTooBig(f"The body is larger than {limit} bytes.")
        target.write(block)
    target.seek(0)
    return target


class FileBodyParser(BaseParser):
    """Any body, as the file `file`: for endpoints that take a whole file as their body (an import). It is
    copied in pieces to a temporary file, never held whole in memory, up to CHATAPI_IMPORT_MAX_BYTES."""

    media_type = "*/*"

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> DataAndFiles:
        if stream is None:
            return DataAndFiles({}, {})
        return DataAndFiles({}, {"file": spool(stream, limit=settings.CHATAPI_IMPORT_MAX_BYTES)})
