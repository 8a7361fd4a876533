"""bench.stages: per-stage wall and CPU time of a DirectRunner run (pure logic, fake clocks)."""
import types

from bench.stages import StageClock


class _Ticks:
    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def _manager(name):
    return types.SimpleNamespace(stage=types.SimpleNamespace(name=name))


def test_times_add_up_per_stage_and_the_slowest_come_first():
    clock = StageClock(clock=_Ticks(1.0), cpu=_Ticks(0.5))
    calls = []
    timed = clock.wrap(lambda runner, context, manager, data: calls.append(manager.stage.name) or "done")
    assert timed(None, None, _manager("read"), None) == "done"
    assert timed(None, None, _manager("collect"), None) == "done"
    assert timed(None, None, _manager("collect"), None) == "done"
    assert calls == ["read", "collect", "collect"]
    assert clock.first_bundle > 0
    rows = clock.rows(top=5)
    assert [r[0] for r in rows] == ["collect", "read"]
    assert rows[0][3] == 2 and rows[0][1] == 2.0 and rows[0][2] == 1.0  # two bundles of 1 s wall, 0.5 s cpu
    assert "collect" in clock.report(top=1) and "read" not in clock.report(top=1).splitlines()[-1]


def test_a_failing_bundle_is_still_timed_and_its_error_kept():
    clock = StageClock(clock=_Ticks(1.0), cpu=_Ticks(1.0))

    def boom(*_):
        raise RuntimeError("bundle failed")
    timed = clock.wrap(boom)
    try:
        timed(None, None, _manager("s"), None)
    except RuntimeError as e:
        assert "bundle failed" in str(e)
    else:
        raise AssertionError("the bundle's error was swallowed")
    assert clock.bundles["s"] == 1
