"""The one progress display, as it prints into a log (no terminal)."""

import io
import re

from training.progress import Progress


def test_in_a_log_it_prints_total_elapsed_eta_and_rate_lines():
    log = io.StringIO()
    with Progress(4, "train", unit="step", every_s=0.0, file=log) as progress:
        progress.update(1, note="cnn_full epoch 1/2")
        progress.log("[cnn] a message")
        progress.update(2)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("train:  25% 1/4 step [") and "ETA" in lines[0] and "cnn_full epoch 1/2" in lines[0]
    assert "[cnn] a message" in lines and re.match(r"train:  75% 3/4 step \[\d\d:\d\d elapsed, ETA", lines[-1])


def test_updates_past_the_total_are_clipped_and_the_end_is_printed_once():
    log = io.StringIO()
    progress = Progress(2, "profile", unit="point", every_s=3600.0, file=log)
    progress.update(5)  # an early stop skips what is left, never more
    progress.close()
    assert progress.n == 2 and log.getvalue().count("profile: 100% 2/2 point") == 1


def test_weighted_work_is_shown_rounded_and_without_a_rate():
    log = io.StringIO()
    progress = Progress(10.4, "train", unit="s of work", every_s=0.0, file=log, rate=False)
    progress.update(2.6)
    progress.close()
    line = log.getvalue().splitlines()[0]
    assert line.startswith("train:  30% 3/10 s of work [") and "ETA" in line and "/s" not in line
