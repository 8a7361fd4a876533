import io

from transforms import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_line_counts_and_redraws_in_place(monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_S", 0.01)
    out = _Tty()
    with progress.ProgressLine(out):
        progress.add("submitted", 5)
        progress.add("answered", 3)
        progress.add("cost_usd", 0.25)
        import time
        time.sleep(0.1)
    text = out.getvalue()
    assert "\r" in text and "\n" not in text  # updated in place, never a new log line
    assert "submitted 5" in text and "answered 3" in text and "$0.2500" in text


def test_no_output_when_not_a_terminal():
    out = io.StringIO()
    with progress.ProgressLine(out):
        progress.add("submitted", 1)
    assert out.getvalue() == ""
