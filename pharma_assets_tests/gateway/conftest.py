from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pharma_assets.gateway.hotstore import RedisHotStore

from .brokers import Mosquitto

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_store() -> Iterator[RedisHotStore]:
    """A RedisHotStore on the machine's Redis under a unique key prefix, removed after."""
    store = RedisHotStore(REDIS_URL, prefix=f"pharma:test:{uuid.uuid4().hex[:8]}")
    try:
        yield store
    finally:
        store.clear()
        store.close()


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto broker on a free port (the tests may restart it)."""
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield m
    finally:
        m.stop()
