"""The switch interval is lowered while creates run and restored exactly once."""
import sys

import pytest

from transforms import gil


@pytest.fixture
def interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_nested_users_restore_once(interval):
    gil.acquire()
    assert sys.getswitchinterval() == pytest.approx(gil.IO_SWITCH_INTERVAL_S, rel=0.05)
    gil.acquire()
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(gil.IO_SWITCH_INTERVAL_S, rel=0.05), "one user still sending"
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)


def test_extra_release_changes_nothing(interval):
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)


def test_a_shorter_interval_is_kept(interval):
    sys.setswitchinterval(0.0001)
    gil.acquire()
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
