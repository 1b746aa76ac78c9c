"""The tenant directory's `TtlCache`: entries lapse, and what it holds is bounded in bytes."""

from __future__ import annotations

import threading
import time

from writejobs.intake.directory import TtlCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_misses_included_is_served_until_its_ttl_passes() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(5.0, clock=clock)
    loads: list[str] = []

    def load(value: str | None) -> str | None:
        loads.append(str(value))
        return value

    assert cache.get("key", lambda: load("v")) == "v"
    assert cache.get("miss", lambda: load(None)) is None
    clock.now += 4.9
    assert cache.get("key", lambda: load("other")) == "v"
    assert cache.get("miss", lambda: load("other")) is None
    assert cache.peek("key") == (True, "v")
    clock.now += 0.2
    assert cache.peek("key") == (False, None)
    assert cache.get("key", lambda: load("v2")) == "v2"
    assert loads == ["v", "None", "v2"]


def test_expired_entries_are_dropped_as_new_ones_are_stored() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(5.0, clock=clock)
    for n in range(100):
        cache.get(f"old-{n}", lambda: None)
    assert len(cache) == 100
    clock.now += 6
    cache.get("new", lambda: "v")
    assert len(cache) == 1
    assert cache.peek("new") == (True, "v")


def test_large_keys_never_hold_more_than_the_byte_budget() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(5.0, max_bytes=1_000_000, clock=clock)
    # Thirty distinct 100 kB keys, all within one TTL: 3 MB if kept
    for n in range(30):
        cache.get((f"integration-{n}", "g" * 100_000), lambda: None)
    assert cache.weight_bytes <= 1_000_000
    assert 1 <= len(cache) <= 10
    # The newest stay, the oldest went
    assert cache.peek(("integration-29", "g" * 100_000)) == (True, None)
    assert cache.peek(("integration-0", "g" * 100_000)) == (False, None)


def test_storing_a_key_again_replaces_its_weight() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(5.0, clock=clock)
    cache.get("key", lambda: "a")
    weight = cache.weight_bytes
    clock.now += 6
    cache.get("key", lambda: "b")
    assert (len(cache), cache.weight_bytes) == (1, weight)


def test_a_peek_near_the_end_of_an_entrys_life_renews_it_in_the_background() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(5.0, clock=clock)
    cache.get("key", lambda: "v1")
    reloaded = threading.Event()

    def reload() -> str:
        reloaded.set()
        return "v2"

    # early in its life a peek renews nothing
    clock.now += 3.0
    assert cache.peek("key", reload) == (True, "v1")
    assert not reloaded.wait(0.2)
    # in its last fifth it is still served, and reloaded by a thread
    clock.now += 1.5
    assert cache.peek("key", reload) == (True, "v1")
    assert reloaded.wait(5)
    deadline = time.monotonic() + 5
    while cache.peek("key") != (True, "v2") and time.monotonic() < deadline:
        time.sleep(0.01)
    # renewed for a whole TTL from the reload: past the old expiry it still answers
    clock.now += 4.0
    assert cache.peek("key") == (True, "v2")
    clock.now += 1.1
    assert cache.peek("key") == (False, None)
