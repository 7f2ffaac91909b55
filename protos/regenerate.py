"""Regenerate serving/pb from protos/ with grpcio-tools: `python protos/regenerate.py`.

The generated code is committed; a test regenerates it into a temporary folder and diffs.
grpc's generator writes `from carrara.v1 import ...`; we rewrite that to the package path
so the generated modules import without touching sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
SOURCES = ("carrara/v1/prediction.proto",)


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTOS / source),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {source}")
    written = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi"))
    for path in written:
        text = path.read_text().replace(
            "from carrara.v1 import", "from serving.pb.carrara.v1 import"
        )
        path.write_text(text)
    for folder in {p.parent for p in written} | {out / "carrara"}:
        (folder / "__init__.py").touch()
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "serving" / "pb"
    for path in generate(target):
        print(path.relative_to(target))
