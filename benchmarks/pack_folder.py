"""Pack an image folder into one file, and back, to carry a dataset to a machine that cannot see it.

A tar of CIFAR-10's 60,000 small JPEGs is 92 MB (512-byte headers and padding per file) for 55 MB
of images; this format stores each file's bytes back to back after a list of names and sizes, so
the pack is the images plus about 1.5 MB, which fits a 64 MiB transfer limit.

    python benchmarks/pack_folder.py pack ../shared/data/cifar10-jpeg gpu_data/cifar10-jpeg.pack
    python benchmarks/pack_folder.py unpack gpu_data/cifar10-jpeg.pack gpu_data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

MAGIC = b"BNONLYPACK1\n"


def pack(folder: Path, target: Path) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"error: no files below {folder}")
    blobs = [p.read_bytes() for p in files]
    index = json.dumps([[str(p.relative_to(folder)), len(b)] for p, b in zip(files, blobs)]).encode()
    tmp = target.with_name(target.name + ".tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(MAGIC + len(index).to_bytes(8, "little") + index)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, target)
    return len(files)


def unpack(source: Path, folder: Path) -> int:
    data = source.read_bytes()
    if not data.startswith(MAGIC):
        raise SystemExit(f"error: {source} is not a pack made by this script")
    at = len(MAGIC)
    n = int.from_bytes(data[at:at + 8], "little")
    at += 8
    index = json.loads(data[at:at + n])
    at += n
    missing = at + sum(size for _, size in index) - len(data)
    if missing:  # checked before anything is written
        raise SystemExit(f"error: {source} is truncated or damaged ({missing:+d} bytes against its index)")
    for name, _ in index:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SystemExit(f"error: unsafe name in pack: {name}")
    for name, size in index:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[at:at + size])
        at += size
    return len(index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    count = (pack if args.action == "pack" else unpack)(args.source, args.target)
    print(f"{args.action}ed {count} files: {args.source} -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
