"""The tenant directory's `TtlCache`: entries lapse, and what it holds is bounded in bytes."""

from __future__ import annotations

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
