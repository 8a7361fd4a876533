"""The emulator's shared-params interning and identity memo (batch create fast path)."""
from emulator.batches import SharedParams
from emulator.memo import IdentityMemo
from transforms.api.tokens import estimate_request_tokens, messages_tokens, shared_request_tokens


def test_equal_shared_values_become_one_object():
    shared = SharedParams()
    a = shared.intern({"model": "m", "system": [{"type": "text", "text": "x" * 5000}], "messages": []})
    b = shared.intern({"model": "m", "system": [{"type": "text", "text": "x" * 5000}], "messages": []})
    assert a["system"] is b["system"]
    assert a["model"] is b["model"]


def test_values_equal_in_python_but_not_in_json_stay_apart():
    shared = SharedParams()
    a = shared.intern({"output_config": {"format": {"n": 1}}})
    b = shared.intern({"output_config": {"format": {"n": True}}})
    c = shared.intern({"output_config": {"format": {"n": 1.0}}})
    assert b["output_config"]["format"]["n"] is True
    assert isinstance(c["output_config"]["format"]["n"], float)
    assert a["output_config"] is not b["output_config"]


def test_memo_calls_once_per_object_and_per_scalar_value():
    calls = []
    memo = IdentityMemo(lambda obj, n: calls.append((obj, n)) or len(obj) + n)
    obj = [1, 2]
    assert memo(obj, 1) == 3 and memo(obj, 1) == 3
    assert memo([1, 2], 1) == 3  # equal but another object: computed again
    assert memo(obj, 2) == 4
    assert len(calls) == 3


def test_memo_stays_bounded():
    memo = IdentityMemo(lambda obj: 0)
    for _ in range(IdentityMemo.MAX_ENTRIES * 3):
        memo([])
    assert len(memo._entries) <= IdentityMemo.MAX_ENTRIES


def test_request_tokens_split_adds_up():
    params = {"system": [{"type": "text", "text": "instructions " * 50}],
              "messages": [{"role": "user", "content": "hello there"}],
              "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}
    assert shared_request_tokens(params) + messages_tokens(params) == estimate_request_tokens(params)


def test_requests_and_items_pickle_with_every_field():
    import pickle

    from transforms.prompts.requests import Item, Request
    item = Item("r1", "k", "sha", 12, position=3, flags=("a", "b"))
    request = Request("cid", "pid", "k", (item,), "text", True, 300, 40, 900, attempt=2)
    again = pickle.loads(pickle.dumps(request, pickle.HIGHEST_PROTOCOL))
    assert again == request and again.items[0] == item and again.attempt == 2


def test_a_value_shared_already_is_kept_without_being_compared_again(monkeypatch):
    from emulator import jsonutil
    shared = SharedParams()
    system = [{"type": "text", "text": "x" * 5000}]
    first = shared.intern({"system": system})
    monkeypatch.setattr(jsonutil, "dumps_bytes", lambda value: 1 / 0)  # never written out again
    again = shared.intern({"system": system})
    assert first["system"] is again["system"] is system
