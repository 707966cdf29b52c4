"""Regenerate the gRPC stubs from proto/ (`make proto`).

One generated package, written to two places: `libs/common/proto` for the services and a
byte-identical mirror in `sdk/ratchet/_proto`, because the SDK is a distribution of its own and
must not import `libs`. `--check` regenerates into a temp dir and exits 1 when either copy is
stale or the two copies differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIRS = (ROOT / "libs" / "common" / "proto", ROOT / "sdk" / "ratchet" / "_proto")
PROTOS = ["ratchet/v1/worker.proto"]
GENERATED = ["worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"]
INIT_TEXT = '"""Generated from proto/ by scripts/gen_proto.py (`make proto`); do not edit."""\n'


def render() -> dict[str, bytes]:
    """The generated package: file name → contents (the `__init__.py` included)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {"__init__.py": INIT_TEXT.encode()}
        for name in GENERATED:
            text = (Path(tmp) / "ratchet" / "v1" / name).read_text()
            # protoc writes absolute imports of the proto package; package-relative ones let
            # the same bytes work under both libs.common.proto and ratchet._proto.
            text = text.replace("from ratchet.v1 import worker_pb2", "from . import worker_pb2")
            files[name] = text.encode()
        return files


def write(out: Path, files: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)


def stale() -> list[str]:
    """Committed files (relative to the repo root) that differ from a fresh generation.

    Both copies are compared with the same fresh bytes, so a copy edited by hand is reported
    even when the other one is current.
    """
    fresh = render()
    bad: list[str] = []
    for out in OUT_DIRS:
        for name, data in fresh.items():
            path = out / name
            if not path.exists() or path.read_bytes() != data:
                bad.append(str(path.relative_to(ROOT)))
    return bad


def main() -> None:
    if "--check" in sys.argv:
        bad = stale()
        if bad:
            print(f"stale or diverging generated stubs: {bad}; run `make proto`")
            raise SystemExit(1)
        print("proto stubs are up to date")
        return
    files = render()
    for out in OUT_DIRS:
        write(out, files)
        print(f"generated {sorted(files)} in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
