"""Regenerate the JSON Schema of config.json shipped in the package (src/bnonly/schemas/) from
TrainConfig's fields, after a field, its help or its bounds changed:
    python3 tools/write_schemas.py
tests/test_formats.py fails until the shipped file equals what the fields give. The other
schemas are written by hand: a change to them is a format change (bnonly.formats)."""

import json
from pathlib import Path

from bnonly import config

path = Path(__file__).resolve().parents[1] / "src" / "bnonly" / "schemas" / "config.schema.json"
path.write_text(json.dumps(config.json_schema(), indent=2, ensure_ascii=False) + "\n")
print(f"wrote {path}")
