import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from transforms.batching import BatchBounds, BatchByWeight


def _check_batches(expected_names, bounds, extra=None):
    """A matcher: keys never mixed, bounds kept (or a lone element), nothing lost or doubled."""

    def check(batches):
        seen = []
        for key, batch in batches:
            names = [n for n, _, _ in batch]
            if not all(n.startswith(key) for n in names):
                raise BeamAssertException(f"keys mixed in {key}: {names}")
            if len(batch) > 1 and (len(batch) > bounds.max_items
                                   or (bounds.max_bytes and sum(b for _, b, _ in batch) > bounds.max_bytes)
                                   or (bounds.max_tokens and sum(t for _, _, t in batch) > bounds.max_tokens)):
                raise BeamAssertException(f"bounds broken: {batch}")
            seen += names
        if sorted(seen) != sorted(expected_names):
            raise BeamAssertException(f"lost or doubled: {sorted(seen)}")
        if extra:
            extra(batches)
    return check


def _run(elements, bounds, extra=None):
    with TestPipeline() as p:
        out = p | beam.Create(elements) | BatchByWeight(bounds, lambda v: (v[1], v[2]))
        assert_that(out, _check_batches([v[0] for _, v in elements], bounds, extra))


def test_bounds_by_count_and_bytes_per_key():
    elements = [("a", (f"a{i}", 10, 1)) for i in range(7)] + [("b", (f"b{i}", 40, 1)) for i in range(3)]

    def b_alone(batches):  # 40 + 40 > 50: every b goes alone
        if sorted(len(b) for k, b in batches if k == "b") != [1, 1, 1]:
            raise BeamAssertException(str(batches))
    _run(elements, BatchBounds(max_items=3, max_bytes=50), b_alone)


def test_oversized_element_goes_alone_under_token_bound():
    elements = [("k", ("k-small", 1, 5)), ("k", ("k-huge", 1, 500)), ("k", ("k-s2", 1, 5))]

    def huge_alone(batches):
        for _, b in batches:
            if any(n == "k-huge" for n, _, _ in b) and len(b) != 1:
                raise BeamAssertException(str(batches))
    _run(elements, BatchBounds(max_items=10, max_tokens=100), huge_alone)


def test_bounds_fail_when_broken():
    """The matcher itself catches a lost element (so the tests above can fail)."""
    check = _check_batches(["a1", "a2"], BatchBounds(max_items=5))
    with pytest.raises(BeamAssertException):
        check([("a", [("a1", 1, 1)])])


@pytest.mark.parametrize("kwargs", [{"max_items": 0}, {"max_items": 1, "max_bytes": 0}])
def test_invalid_bounds(kwargs):
    with pytest.raises(ValueError):
        BatchBounds(**kwargs)
