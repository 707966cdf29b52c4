"""The partition -> scheduler map every scheduler computes from the member list."""

from __future__ import annotations

from services.scheduler.ownership import assignment


def test_assignment_is_balanced_and_stable() -> None:
    members = ["s1", "s2", "s3"]
    plan = assignment(16, members)
    counts = {m: sum(1 for v in plan.values() if v == m) for m in members}
    assert sorted(counts.values()) == [5, 5, 6]
    for n in range(1, 9):
        sizes = {m: 0 for m in range(n)}
        for m in assignment(16, [str(i) for i in range(n)]).values():
            sizes[int(m)] += 1
        assert max(sizes.values()) - min(sizes.values()) <= 1
    assert assignment(16, list(reversed(members))) == plan  # same list, same answer
    grown = assignment(16, [*members, "s4"])
    moved = sum(1 for p in plan if plan[p] != grown[p])
    assert moved <= 8  # a join moves its share and a little more, not everything


def test_a_dead_letter_records_the_subject_as_published() -> None:
    from libs.common import subjects

    assert subjects.as_published("cmd.acme.15.run.trigger") == "cmd.acme.run.trigger"
    assert subjects.as_published("task.acme.report.3.batch") == "task.acme.report.batch"
    assert subjects.as_published("task.acme.changes") == "task.acme.changes"
    assert subjects.as_published("evt.acme.doc.7") == "evt.acme.doc.7"
