"""How much JPEG compression costs full training (issue 19's data question).

The shared CIFAR-10 is JPEG at quality 75 with 4:2:0 chroma, about 30.5 dB PSNR against the
original images, which are not on these machines. This re-encodes a dataset at lower qualities
(train and test alike), measures each copy's PSNR against the images it was made from, and writes
a sweep that trains the same config on every copy; ``report`` puts accuracy beside PSNR.

    # 1. the copies, their PSNR and the sweep file (about a minute per quality on one core)
    python3 benchmarks/jpeg_quality.py prepare --source ../shared/data/cifar10-jpeg --out /work/jpeg
    #    (--train all,bn trains BN-only on every copy too; --seeds 0,1 each with two seeds; run
    #    prepare again on the same --out for more seeds or specs: what it measured is kept)
    # 2. train (niced, resumable; `all` ResNet-14, the paper's recipe on a shortened schedule)
    nice bnonly sweep /work/jpeg/sweep.yaml --jobs 2
    # 3. the table, into results/jpeg_quality/
    python3 benchmarks/jpeg_quality.py report --out /work/jpeg --results results/jpeg_quality

With the original CIFAR-10 (the python batches, ``cifar-10-batches-py`` or its .tar.gz), the same
three commands with ``--source path/to/cifar-10-batches-py --lossless`` compare the lossless
originals (a PNG copy, PSNR infinite) with JPEG at each quality, the shared set's 75 included:
then PSNR is against the originals, which is the comparison the shared data cannot give.

Against the shared data, PSNR is measured against the quality-75 images, not the originals: a
copy at quality 50 has lost what the q75 encoding lost plus what q50 loses of the q75 images.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from bnonly import open_dataset
from bnonly.trainable import SpecError, parse_spec

#: The recipe trained on every copy: ResNet-14, the paper's recipe on a schedule cut to EPOCHS with
#: its milestones scaled (80/160, 120/160); what trains is chosen per sweep (TRAIN by default: full
#: training, where the 4-point gap is; `bn` beside it says whether the data costs BN-only as much).
EPOCHS = 15
TRAIN = "all"
RECIPE = dict(model="cifar_resnet_14", epochs=EPOCHS, schedule_epochs=EPOCHS,
              milestones=[EPOCHS * 0.5, EPOCHS * 0.75], threads=1)


def encode(image: np.ndarray, quality: int | None) -> bytes:
    """``image`` (H x W x 3 uint8) as JPEG at ``quality`` with 4:2:0 chroma (the shared set's
    subsampling), or as PNG (lossless) when ``quality`` is None."""
    buffer = io.BytesIO()
    if quality is None:
        Image.fromarray(image).save(buffer, format="PNG")
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of ``decoded`` against ``reference`` over all their pixels (8-bit peak)."""
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def write_copy(split, root: Path, quality: int | None) -> np.ndarray:
    """Write ``split`` (an in-memory ArrayDataset) as ROOT/<class>/<i>.jpg|png; returns the decoded images."""
    suffix = "png" if quality is None else "jpg"
    decoded = np.empty((len(split.labels), *split.images.shape[2:], 3), dtype=np.uint8)
    for cls in split.classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images.permute(0, 2, 3, 1).numpy(), split.labels.tolist())):
        data = encode(image, quality)
        (root / split.classes[label] / f"{i:05d}.{suffix}").write_bytes(data)
        decoded[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return decoded


def prepare(source: str, out: Path, qualities: list[int], lossless: bool, train: tuple[str, ...] = (TRAIN,),
            seeds: tuple[int, ...] = (0,)) -> dict:
    """Re-encode ``source`` at each quality under OUT, measure PSNR, write OUT/sweep.yaml training every
    spec of ``train`` with every seed on the copies made now (and the source itself unless
    ``lossless``). Called again on the same OUT (more seeds, specs or qualities), it keeps the copies
    measured before in OUT/psnr.json, so that ``report`` still names every run's copy."""
    for spec in train:  # before minutes of re-encoding, not when the sweep starts
        try:
            parse_spec(spec)
        except SpecError as e:
            raise SystemExit(f"--train: {e}") from None
    data = open_dataset(source)
    if data.train.kind != "array":
        raise SystemExit(f"{source} opens as streamed images; this compares in-memory (CIFAR-size) datasets only")
    measured = {"source": str(Path(source).resolve()), "psnr_against": "the source images", "copies": {}}
    if (out / "psnr.json").exists():
        before = json.loads((out / "psnr.json").read_text())
        if before["source"] != measured["source"]:
            raise SystemExit(f"{out} holds copies of {before['source']}, not of {measured['source']}: "
                             "give another --out")
        measured["copies"] = before["copies"]
    made = []
    for quality in [*([None] if lossless else []), *qualities]:
        name = "lossless" if quality is None else f"q{quality}"
        folder = out / name
        values = {}
        for split_name, split in (("train", data.train), ("test", data.test)):
            reference = split.images.permute(0, 2, 3, 1).numpy()
            values[split_name] = psnr(reference, write_copy(split, folder / split_name, quality))
        measured["copies"][name] = dict(quality=quality, folder=str(folder), psnr_train=values["train"],
                                        psnr_test=values["test"])
        made.append(str(folder))
        print(f"{name}: PSNR train {values['train']:.2f} dB, test {values['test']:.2f} dB -> {folder}")
    data = made
    if not lossless:  # the source itself (the shared q75 set), trained as it is, is the reference
        data.insert(0, str(Path(source).resolve()))
    sweep = {"base": dict(RECIPE, out=str(out / "runs")),
             "grid": {"data": data, "train": list(train), "seed": list(seeds)}}
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    (out / "psnr.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(f"wrote {out / 'sweep.yaml'} and {out / 'psnr.json'}")
    return measured


def report(out: Path, results: Path) -> str:
    """RESULTS/table.md and RESULTS/runs.json (accuracy of each copy's run beside its PSNR), and the
    runs' config, summary and metrics under RESULTS/runs/."""
    measured = json.loads((out / "psnr.json").read_text())
    by_folder = {c["folder"]: (name, c) for name, c in measured["copies"].items()}
    rows = []
    for summary_path in sorted((out / "runs").glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        config = json.loads((summary_path.parent / "config.json").read_text())
        if summary.get("status") != "done":
            continue
        name, copy = by_folder.get(str(Path(config["data"]).resolve()), ("source (as shared)", None))
        rows.append(dict(train=config.get("train", TRAIN), seed=config.get("seed", 0), copy=name,
                         quality=copy["quality"] if copy else 75,
                         data=config["data"],
                         psnr_test=copy["psnr_test"] if copy else None,
                         psnr_train=copy["psnr_train"] if copy else None,
                         test_acc=summary["test_acc"], epochs=config["epochs"], run=summary_path.parent.name,
                         wall_seconds=summary["wall_seconds"]))
    rows.sort(key=lambda r: (r["train"], r["seed"], -(r["quality"] or 101)))
    reference = {}  # per spec and seed, the least compressed copy's accuracy: each row's change is against it
    for r in rows:
        reference.setdefault((r["train"], r["seed"]), r["test_acc"])
        r["change_points"] = 100 * (r["test_acc"] - reference[r["train"], r["seed"]])
    results.mkdir(parents=True, exist_ok=True)
    for r in rows:  # the runs' small files, never weights
        (results / "runs" / r["run"]).mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "summary.json", "metrics.jsonl"):
            shutil.copy(out / "runs" / r["run"] / name, results / "runs" / r["run"] / name)
    (results / "runs.json").write_text(json.dumps(dict(measured, runs=rows), indent=2) + "\n")
    lines = ["| what trains | seed | copy | JPEG quality | PSNR test (dB) | PSNR train (dB) | test acc "
             "| change (points) | epochs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        db = lambda v: "—" if v is None else ("∞" if math.isinf(v) else f"{v:.2f}")
        lines.append(f"| `{r['train']}` | {r['seed']} | {r['copy']} | {r['quality'] or 'lossless'} "
                     f"| {db(r['psnr_test'])} | {db(r['psnr_train'])} | {100 * r['test_acc']:.2f}% "
                     f"| {r['change_points']:+.2f} | {r['epochs']:g} |")
    table = "\n".join(lines + _over_seeds(rows))
    against = measured["psnr_against"] if "lossless" in measured["copies"] else "the shared quality-75 images"
    (results / "table.md").write_text(f"PSNR against {against}; source {measured['source']}. Change: test "
                                      f"accuracy against the least compressed copy's, same spec.\n\n{table}\n")
    print(table)
    return table


def _over_seeds(rows: list[dict]) -> list[str]:
    """Where a spec ran on a copy with several seeds: the change's mean ± std over those seeds, as
    lines of a second table (none when every spec and copy has one seed)."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["train"], r["copy"]), []).append(r)
    if all(len(v) < 2 for v in runs.values()):
        return []

    def mean_std(values: list[float], sign: str = "") -> str:
        return f"{np.mean(values):{sign}.2f}" + (f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else "")

    lines = ["", "| what trains | copy | seeds | test acc (%), mean ± std | change (points), mean ± std |",
             "|---|---|---|---|---|"]
    for (train, copy), v in runs.items():
        accuracy, change = [100 * r["test_acc"] for r in v], [r["change_points"] for r in v]
        lines.append(f"| `{train}` | {copy} | {', '.join(str(r['seed']) for r in v)} "
                     f"| {mean_std(accuracy)} | {mean_std(change, '+')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="re-encode the source at each quality, measure PSNR, write the sweep")
    p.add_argument("--source", required=True, help="a dataset bnonly opens in memory (image folder, CIFAR batches)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--qualities", default="50,30", help="JPEG qualities, comma-separated (default: 50,30)")
    p.add_argument("--lossless", action="store_true",
                   help="also a lossless PNG copy, and train every copy rather than the source itself (for "
                        "the original CIFAR-10: give --qualities 75,50,30)")
    p.add_argument("--train", default=TRAIN,
                   help=f"what trains, comma-separated what-trains specs, each on every copy (default: {TRAIN})")
    p.add_argument("--seeds", default="0", help="seeds, comma-separated, each for every spec and copy (default: 0)")
    p = sub.add_parser("report", help="accuracy against PSNR from the finished runs")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--results", type=Path, default=Path("results/jpeg_quality"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "prepare":
        prepare(args.source, args.out, [int(q) for q in args.qualities.split(",")], args.lossless,
                tuple(args.train.split(",")), tuple(int(s) for s in args.seeds.split(",")))
    else:
        report(args.out, args.results)


if __name__ == "__main__":
    main()
