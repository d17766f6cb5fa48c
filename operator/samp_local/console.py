"""What the demo prints, for a person or for a machine.

Text mode (the default on a terminal) prints short timestamped lines, sizes humanised,
and one progress display per long step: on a terminal a single line redrawn in place
(spinner, elapsed seconds, what it is doing now), elsewhere a start and an end line.
JSON mode (``--output json``, and the default when stdout is not a terminal) prints one
JSON object per line with the same facts as fields, for log pipelines and tests.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Console:
    """The demo's one output channel (thread-safe: the progress line redraws itself)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.json = mode == "json" or (mode == "auto" and not self.tty)
        self._lock = threading.Lock()
        self._line: str | None = None  # the progress line now drawn (terminal only)

    def _write(self, text: str) -> None:
        with self._lock:
            if self._line is not None:
                self.stream.write("\r\x1b[2K")
            self.stream.write(text + "\n")
            if self._line is not None:
                self.stream.write(self._line)
            self.stream.flush()

    def say(self, event: str, text: str, **fields: Any) -> None:
        """One fact: a readable line, or a JSON object with ``event`` and the fields."""
        if self.json:
            record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                      "event": event, "message": text, **fields}
            self._write(json.dumps(record, default=str))
        else:
            stamp = datetime.now().strftime("%H:%M:%S")
            self._write(f"[{stamp}] {text}")

    def block(self, text: str) -> None:
        """A multi-line block (a table, the summary); in JSON mode one record."""
        if self.json:
            self.say("block", text)
        else:
            self._write(text)

    @contextmanager
    def progress(self, event: str, label: str) -> Iterator[Progress]:
        """One display for a long step; ``update()`` says what it does now."""
        bar = Progress(self, event, label)
        bar.start()
        try:
            yield bar
        except BaseException:
            bar.finish(ok=False)
            raise
        bar.finish(ok=True)


class Progress:
    """A step in progress: redrawn on a terminal, a start and an end line otherwise."""

    def __init__(self, console: Console, event: str, label: str) -> None:
        self.console, self.event, self.label = console, event, label
        self.detail = ""
        self.result = ""  # shown after the label when done
        self.failed = False  # set by a step that ends without raising but did not succeed
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def start(self) -> None:
        c = self.console
        if c.json:
            c.say(f"{self.event}.start", self.label)
        elif not c.tty:
            c.say(self.event, f"{self.label} ...")
        else:
            self._thread = threading.Thread(target=self._spin, daemon=True, name="progress")
            self._thread.start()

    def update(self, detail: str) -> None:
        self.detail = detail
        c = self.console
        if c.json:
            c.say(f"{self.event}.progress", detail, seconds=self.seconds)

    def _spin(self) -> None:
        c, i = self.console, 0
        while not self._stop.wait(0.2):
            line = f"{SPINNER[i % len(SPINNER)]} {self.label} {self.seconds:.0f} s"
            line += f"  {self.detail}" if self.detail else ""
            with c._lock:
                c._line = line
                c.stream.write("\r\x1b[2K" + line)
                c.stream.flush()
            i += 1

    def finish(self, ok: bool) -> None:
        c = self.console
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            with c._lock:
                c._line = None
                c.stream.write("\r\x1b[2K")
        ok = ok and not self.failed
        mark = "✔" if ok else "✖"
        tail = f": {self.result}" if self.result else ""
        c.say(f"{self.event}.end", f"{mark} {self.label} ({self.seconds:.1f} s){tail}",
              ok=ok, seconds=self.seconds)
