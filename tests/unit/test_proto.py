"""The generated protobuf package must match proto/ in both places it is committed."""

from pathlib import Path

import pytest

from scripts import gen_proto


def test_generated_stubs_are_fresh() -> None:
    assert gen_proto.stale() == []


def test_both_copies_are_one_package() -> None:
    libs_copy, sdk_copy = gen_proto.OUT_DIRS
    names = sorted(p.name for p in libs_copy.iterdir() if p.is_file())
    assert names == sorted(p.name for p in sdk_copy.iterdir() if p.is_file())
    for name in names:
        assert (libs_copy / name).read_bytes() == (sdk_copy / name).read_bytes(), name


def test_a_diverging_copy_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hand edit to one copy must fail the check even though the other copy is current.
    root = tmp_path
    dirs = tuple(root / d for d in ("libs/common/proto", "sdk/ratchet/_proto"))
    files = gen_proto.render()
    for d in dirs:
        gen_proto.write(d, files)
    monkeypatch.setattr(gen_proto, "ROOT", root)
    monkeypatch.setattr(gen_proto, "OUT_DIRS", dirs)
    assert gen_proto.stale() == []
    edited = dirs[1] / "worker_pb2.pyi"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    assert gen_proto.stale() == ["sdk/ratchet/_proto/worker_pb2.pyi"]
