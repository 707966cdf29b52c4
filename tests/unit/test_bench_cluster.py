"""The pure parts of `make chaos-cluster` and `make bench-scale` (bench/chaos_cluster.py, scale.py)."""

from __future__ import annotations

from bench.chaos_cluster import event_outcomes, fault_points, hold_points, passed, pick_tenants
from bench.scale import owner_counts, per_task, round_robin


def test_each_fault_strikes_inside_the_triggering_and_holds_it_half_a_share_later() -> None:
    points = fault_points(1000, 4)
    holds = hold_points(1000, 4)
    assert points == [200, 400, 600, 800]
    assert holds == [300, 500, 700, 900]
    assert all(p < h < 1000 for p, h in zip(points, holds, strict=True))


def test_tenants_are_spread_over_every_partition_owner() -> None:
    partition_of = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5}
    owner_of = {0: "s1", 1: "s1", 2: "s1", 3: "s1", 4: "s2", 5: "s2"}
    picked = pick_tenants(partition_of, owner_of, 4)
    assert len(picked) == 4
    assert {owner_of[partition_of[t]] for t in picked} == {"s1", "s2"}
    # Two of each: round-robin, not the first four (all of s1).
    assert sorted(picked) == ["a", "b", "e", "f"]


def test_tenants_without_leases_are_taken_in_order() -> None:
    assert pick_tenants({"a": 0, "b": 1, "c": 2}, {}, 2) == ["a", "b"]


def test_events_count_double_runs_and_skipped_events() -> None:
    assert event_outcomes({0, 1, 2}, [0, 1, 2]) == (0, 0)
    assert event_outcomes({0, 1, 2}, [0, 0, 0, 2]) == (2, 1)
    assert event_outcomes(set(), []) == (0, 0)


def test_a_violation_fails_the_chaos_run() -> None:
    clean = {"lost": 0, "double": 0, "events_double": 0, "events_skipped": 0,
             "runs_not_succeeded": 0, "tasks_without_one_success": 0,
             "durable_sleeps_unfinished": 0}
    assert passed(clean)
    for key in clean:
        assert not passed({**clean, key: 1}), key


def test_per_task_divides_deltas_and_keeps_new_keys() -> None:
    before = {"scheduler": 1.0, "api": 2.0}
    after = {"scheduler": 3.0, "api": 2.5, "worker": 1.0}
    assert per_task(before, after, 1000, scale=1e6) == {
        "scheduler": 2000.0, "api": 500.0, "worker": 1000.0}


def test_partitions_per_scheduler_by_name() -> None:
    rows = [(0, "vm-1"), (1, "vm-2"), (2, "vm-1"), (3, "gone")]
    assert owner_counts(rows, {"vm-1": "scheduler", "vm-2": "scheduler-2"}) == {
        "gone": 1, "scheduler": 2, "scheduler-2": 1}


def test_round_robin_sends_every_run_once_in_bounded_batches() -> None:
    plan = round_robin(1003, 8, 100)
    assert sum(n for _, n in plan) == 1003
    assert max(n for _, n in plan) <= 100
    per_tenant = [sum(n for j, n in plan if j == t) for t in range(8)]
    assert max(per_tenant) - min(per_tenant) <= 1
    assert [j for j, _ in plan[:8]] == list(range(8))
