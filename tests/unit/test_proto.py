"""The committed gRPC stubs must match proto/ (run `make proto` after editing it)."""

from scripts import gen_proto


def test_generated_stubs_are_fresh() -> None:
    assert gen_proto.stale() == []
