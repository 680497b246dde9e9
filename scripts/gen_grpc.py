#!/usr/bin/env python3
"""Regenerate app/protocols/grpc_gen/open_inference_pb2*.py from app/protocols/grpc_gen/open_inference.proto with grpcio-tools.

    python -m scripts.gen_grpc [--check]      # --check: exit 1 if the committed files differ from a fresh generation

protoc writes `import open_inference_pb2` (a top-level module); the generated gRPC module is rewritten to import it
from the package it lives in, app.protocols.grpc_gen. And protoc registers the messages in protobuf's process-wide default
pool, where tritonclient.grpc registers the same `inference.*` names from its own grpc_service.proto: the second
import in one process fails ("duplicate symbol"). The wire needs only field numbers and the method paths, not the
pool, so the messages are registered in a pool of their own and both can be imported side by side (a test does).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "app" / "protocols" / "grpc_gen"
PROTO = "open_inference.proto"
GENERATED = ("open_inference_pb2.py", "open_inference_pb2.pyi", "open_inference_pb2_grpc.py")


def generate(out: Path) -> None:
    outputs = [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PACKAGE}", *outputs, PROTO], check=True, cwd=PACKAGE)
    rewrite(out / "open_inference_pb2_grpc.py", "import open_inference_pb2 as", "from app.protocols.grpc_gen import open_inference_pb2 as")
    pool = "_descriptor_pool.{}().AddSerializedFile("
    rewrite(out / "open_inference_pb2.py", pool.format("Default"), pool.format("DescriptorPool"))


def rewrite(module: Path, old: str, new: str) -> None:
    text = module.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{module.name}: expected one {old!r} in protoc's output; grpcio-tools changed what it writes")
    module.write_text(text.replace(old, new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            stale = [name for name in GENERATED if (fresh / name).read_text() != (PACKAGE / name).read_text()]
            if stale:
                print(f"stale generated files (run python -m scripts.gen_grpc): {', '.join(stale)}")
                return 1
            print("generated gRPC modules are current")
            return 0
        for name in GENERATED:
            shutil.copyfile(fresh / name, PACKAGE / name)
    print(f"wrote {', '.join(GENERATED)} in {PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
