"""A one-line progress report on stderr for long commands (rewritten in place; a tty, or asked for)."""

from __future__ import annotations

import time

from django.core.management.base import OutputWrapper


class Progress:
    """Writes `\\r<line>` at most every `interval` seconds, and the last line with a newline at `done()`.
    Silent unless `enabled` (the command's `--progress`); by default, when the stream is a terminal."""

    def __init__(self, stream: OutputWrapper, *, enabled: bool | None = None, interval: float = 0.2) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.started = time.monotonic()
        self.shown = 0.0
        self.line = ""

    def update(self, line: str, *, force: bool = False) -> None:
        self.line = line
        now = time.monotonic()
        if self.enabled and (force or now - self.shown >= self.interval):
            self.shown = now
            self.stream.write(f"\r{line} ({now - self.started:.0f} s)\x1b[K", ending="")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.line:
            self.update(self.line, force=True)
            self.stream.write("")
            self.stream.flush()


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
