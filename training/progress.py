"""One progress display for every long job (train, profile, simulate, the benchmarks).

On a terminal: a tqdm bar with the total, the rate and an ETA. In a log (no terminal: CI,
nohup): the same numbers as one plain line every `every_s` seconds and at the end, instead of
a bar redrawn with carriage returns. Messages go through `log`, so they never break the bar.
It lives in `training/` because its users are the training half and the tools above it
(`loadtest/`, the CLI); the serving half shows no progress.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, ETA {remaining}{rate}]{postfix}"
)
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{rate}]{postfix}"


class Progress:
    """`with Progress(total, "train") as p: ... p.update(1)`; `p.log("...")` for a message.

    Counts may be fractional (work weighted by its cost); they are shown rounded. `rate=False` hides
    the units per second, which mean nothing for weighted work."""

    def __init__(
        self,
        total: float,
        desc: str,
        unit: str = "step",
        every_s: float = 15.0,
        file: TextIO | None = None,
        rate: bool = True,
    ):
        self.file = file or sys.stderr
        self.total, self.desc, self.unit, self.every_s, self.rate = total, desc, unit, every_s, rate
        self.interactive = self.file.isatty()
        self.n: float = 0
        self.note = ""
        self._started = self._printed = time.monotonic()
        self._printed_n: float | None = None
        self._shown = 0  # what the terminal bar shows: whole units
        self._bar = tqdm(
            total=round(total),
            desc=desc,
            unit=unit,
            file=self.file,
            disable=not self.interactive,
            dynamic_ncols=True,
            leave=True,
            bar_format=BAR_FORMAT.replace("{rate}", ", {rate_fmt}" if rate else ""),
        )

    def update(self, n: float = 1.0, note: str | None = None) -> None:
        """`n` more units done (clipped to the total); `note`: a short status shown after the numbers."""
        self.n += min(n, max(0, self.total - self.n))
        if note is not None:
            self.note = note
        if self.interactive:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            shown = round(self.n)
            self._bar.update(shown - self._shown)
            self._shown = shown
        elif time.monotonic() - self._printed >= self.every_s:
            self._print_line()

    def log(self, message: str) -> None:
        if self.interactive:
            tqdm.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def line(self) -> str:
        """The current state as one line: done/total, elapsed, ETA (and rate)."""
        return tqdm.format_meter(
            round(self.n),
            round(self.total),
            time.monotonic() - self._started,
            prefix=self.desc,
            unit=self.unit,
            bar_format=LINE_FORMAT.replace("{rate}", ", {rate_fmt}" if self.rate else ""),
            postfix=self.note or None,
        )

    def _print_line(self) -> None:
        self._printed, self._printed_n = time.monotonic(), self.n
        print(self.line(), file=self.file, flush=True)

    def close(self) -> None:
        if self.interactive:
            self._bar.close()
        elif self._printed_n != self.n:
            self._print_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
