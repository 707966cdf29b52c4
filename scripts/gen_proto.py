"""Regenerate the gRPC stubs from proto/ into sdk/ratchet/_proto (`make proto`).

`--check` regenerates into a temp dir and exits 1 when the committed stubs differ.
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "sdk" / "ratchet" / "_proto"
PROTOS = ["ratchet/v1/worker.proto"]
GENERATED = ["worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"]


def generate(out: Path) -> None:
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
        out.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "ratchet" / "v1" / name).read_text()
            # protoc writes absolute imports of the proto package; make them package-relative.
            text = text.replace("from ratchet.v1 import worker_pb2", "from . import worker_pb2")
            (out / name).write_text(text)


def stale() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in GENERATED
            if not (OUT_DIR / name).exists()
            or not filecmp.cmp(Path(tmp) / name, OUT_DIR / name, shallow=False)
        ]


def main() -> None:
    if "--check" in sys.argv:
        bad = stale()
        if bad:
            print(f"stale generated stubs: {bad}; run `make proto`")
            raise SystemExit(1)
        print("proto stubs are up to date")
        return
    generate(OUT_DIR)
    print(f"generated {GENERATED} in {OUT_DIR}")


if __name__ == "__main__":
    main()
