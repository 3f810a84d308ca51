"""A dependency-free progress bar for long loops (training epochs, statistics passes).

Writes to stderr, at most a few times per second; on a terminal it redraws one line, elsewhere (CI logs,
files) it prints a line every `log_every` seconds so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Count `total` units of work, showing rate, elapsed time, remaining time and extra fields.

    Example:
        >>> with Progress(total=len(batches), desc="epoch 1", unit="img") as bar:
        ...     for x in batches:
        ...         bar.update(len(x), loss=0.5)
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        unit: str = "it",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        log_every: float = 10.0,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else log_every
        self.count, self.fields = 0, {}
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, **fields: Any) -> None:
        self.count += n
        self.fields.update(fields)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        frac = self.count / self.total if self.total else 1.0
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        width = 24
        bar = "#" * int(width * min(frac, 1.0))
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.fields.items())
        line = (
            f"{self.desc} [{bar:<{width}}] {self.count}/{self.total} {rate:,.0f} {self.unit}/s "
            f"{elapsed:.0f}s" + ("" if final else f" eta {eta:.0f}s") + (f" {extra}" if extra else "")
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if final and self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
