import io
import threading
import time

from transforms import progress


class _Stream(io.StringIO):
    """A stream that is or is not a terminal, and tells when something was written."""

    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty
        self.written = threading.Event()

    def isatty(self):
        return self._tty

    def write(self, text):
        n = super().write(text)
        if text.strip("\r\x1b[K"):
            self.written.set()
        return n


def _run_until_written(stream, **kwargs):
    with progress.ProgressLine(stream, **kwargs):
        progress.add("submitted", 5)
        progress.add("answered", 3)
        progress.add("cost_usd", 0.25)
        assert stream.written.wait(30), "no progress line within 30 s"
    return stream.getvalue()


def test_render_with_a_total_gives_share_rate_and_eta():
    # by hand: 250 of 1,000 answered in 50 s = 5.0/s; 750 left -> 150 s = 2.5 min
    line = progress.render({"answered": 250, "submitted": 300, "cost_usd": 1.5}, 50.0, total=1000)
    assert "answered 250 / 1,000 (25%)" in line and "5.0/s" in line and "ETA 2.5 min" in line
    assert "$1.5000" in line
    assert "ETA" not in progress.render({"answered": 250}, 50.0)  # no total, no ETA


def test_a_terminal_gets_one_line_redrawn_in_place(monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_S", 0.01)
    text = _run_until_written(_Stream(tty=True))
    assert "\r" in text and "\n" not in text  # updated in place, never a new log line
    assert "submitted 5" in text and "answered 3" in text and "$0.2500" in text


def test_a_log_gets_periodic_plain_lines():
    """Under a log redirect the run is not silent: plain lines, no carriage returns."""
    text = _run_until_written(_Stream(tty=False), total=10, log_every_s=0.01)
    lines = [line for line in text.splitlines() if line]
    assert lines and all(line.startswith("progress [") for line in lines)
    assert "\r" not in text and "answered 3 / 10 (30%)" in lines[0]
