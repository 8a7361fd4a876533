"""One client and one pool per process (transforms/api/client.py), not one per
DoFn setup(): the DirectRunner calls setup() for every bundle."""
from __future__ import annotations

from transforms.api.client import ApiSettings, shared_client, shared_pool
from tests.conftest import fake_key


def test_same_settings_and_key_share_one_client(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_key("shared-a"))
    settings = ApiSettings(base_url="http://127.0.0.1:9")
    assert shared_client(settings) is shared_client(ApiSettings(base_url="http://127.0.0.1:9"))
    assert shared_client(settings) is not shared_client(ApiSettings(base_url="http://127.0.0.1:10"))


def test_another_key_in_the_environment_gets_its_own_client(monkeypatch):
    settings = ApiSettings(base_url="http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_key("shared-a"))
    first = shared_client(settings)
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_key("shared-b"))
    second = shared_client(settings)
    assert first is not second
    assert second.api_key == fake_key("shared-b")


def test_pools_are_shared_per_name_scope_and_size():
    pool = shared_pool("t-call", 3, scope="budget-1")
    assert shared_pool("t-call", 3, scope="budget-1") is pool
    assert shared_pool("t-call", 3, scope="budget-2") is not pool
    assert shared_pool("t-call", 4, scope="budget-1") is not pool
    assert pool.submit(lambda: 41 + 1).result(timeout=10) == 42
