import pytest

from portkit import runtime


@pytest.fixture
def fresh_runtime(monkeypatch):
    """Rediscover plugins and forget the active backend, before and after the test."""
    monkeypatch.delenv("PORTKIT_BACKEND", raising=False)
    monkeypatch.delenv("PORTKIT_PLUGINS", raising=False)
    runtime.reset()
    yield runtime
    runtime.reset()
