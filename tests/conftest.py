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


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a real accelerator; without one they are skipped, not failed."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
