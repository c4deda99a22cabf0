"""benchmarks/pack_folder.py: the single-file carrier of an image folder to a GPU machine."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pack_folder.py"
spec = importlib.util.spec_from_file_location("pack_folder", SCRIPT)
pack_folder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_folder)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_restores_every_file_byte_for_byte(tmp_path):
    src = tmp_path / "src"
    files = {"train/cat/0001.jpg": b"\xff\xd8cat", "train/dog/0002.jpg": b"", "test/cat/0003.jpg": bytes(range(256))}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    pack = tmp_path / "data.pack"
    assert pack_folder.main(["pack", str(src), str(pack)]) == 0
    assert pack.stat().st_size < sum(map(len, files.values())) + 200  # names and sizes only, no padding
    assert pack_folder.main(["unpack", str(pack), str(tmp_path / "out")]) == 0
    assert _tree(tmp_path / "out") == files


def test_damaged_pack_is_reported(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.jpg").write_bytes(b"0123456789")
    pack = tmp_path / "data.pack"
    pack_folder.pack(src, pack)
    pack.write_bytes(pack.read_bytes()[:-3])
    with pytest.raises(SystemExit, match="truncated or damaged"):
        pack_folder.unpack(pack, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "other").write_bytes(b"not a pack")
    with pytest.raises(SystemExit, match="not a pack"):
        pack_folder.unpack(tmp_path / "other", tmp_path / "out2")
