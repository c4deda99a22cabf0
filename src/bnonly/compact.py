"""Runs in kilobytes: a finished run as its seed, its config and only what training changed.

A BN-only network is its random initialization plus a few thousand numbers, and the
initialization is a function of the seed. ``bnonly export RUN_DIR --compact FILE`` stores the
resolved config (config.json's content: seed, selection seed, model, what trains, ...), the
class count, summary.json, and

- the trained entries only: whole tensors that train, and of a tensor that trains in part
  (``random:matched``, ``random-per-channel:K``) only the chosen entries' values, since their
  positions are re-drawn from the selection seed and spec, as training drew them; of a
  supermask run (``supermask:P``) the scores, read from the run's scores.pt (final.pt holds only
  the masked weights they chose; the mask is re-derived from the stored scores and checked
  against final.pt like everything else);
- every buffer: BatchNorm's running mean and variance (as many floats as BN γ+β) and its step
  counters (one int64 per layer). They are not trained parameters, but evaluation needs them
  and they cannot be re-derived without the training data (recomputing them over training
  batches would not give the same bits), so they are stored.

``load_compact(FILE)`` rebuilds the model exactly as ``training.build`` does (``create_model``
from the seed, ``init_from``'s weights if the run started from another, ``configure`` with the
selection seed, frozen BN statistics if so trained), writes the stored numbers back and checks
the result bit for bit: against the run's final.pt when it is there (where the file was made,
or a path given), naming the first tensor that differs, else against the SHA-256 of the whole
final state stored at export (so a torch whose initialization draws differently is caught).
Export runs the same check before writing, so every compact file rebuilds its run.
``bnonly import FILE --out DIR`` writes an ordinary finished run folder from it.

File: one line ``bnonly-compact sha256=<hex of the rest>``, then the zlib-compressed bytes of a
``torch.save`` of a dict (read back with ``weights_only=True``: no code in the file runs) whose
tensors are packed into one flat tensor per kind and dtype (a tensor per buffer would cost about
240 bytes of zip records and pickle each, measured). zlib takes 8-23% off (the config, the
summary, the step counters, float exponents).

Measured, BN-only runs (1 step of batch 16 on synthetic 32x32 data, 10 classes, torch 2.13 CPU;
buffers = running means and variances + one step counter per BatchNorm layer):

================  ===============  ===============  =====================  ======================
model             trained numbers  buffer numbers   compact file           final.pt
================  ===============  ===============  =====================  ======================
cifar_resnet_14   1,120            1,120 + 15       10,200 B (10.2 kB)     732,559 B (72x)
cifar_resnet_110  8,288            8,288 + 111      63,375 B (63.4 kB)     7,153,607 B (113x)
cifar_resnet_866  64,736           64,736 + 867     483,895 B (484 kB)     57,732,611 B (119x)
================  ===============  ===============  =====================  ======================

The numbers themselves are 4 bytes a float and 8 a counter (R-14: 9,080 bytes); the rest is the
config, the summary and the zip records. Exporting or loading R-866 takes about 2.5 s on one
CPU core (building the 14M-weight model dominates).

For ``--train all`` the trained entries are every parameter, so the compact file is about as
large as final.pt: it is no compression there, only the same format.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import config as cfgmod
from . import formats
from .errors import BnonlyError
from .layers import output_layer
from .models import create_model, family_of
from .rundir import RunDir, atomic_torch_save, atomic_write_bytes, check_writable
from .trainable import Selection, Supermask, TrainableEntries, parse_spec, plain_state_dict, score_state_dict
from .training.build import build_model

MAGIC = b"bnonly-compact sha256="
FORMAT = formats.COMPACT_FORMAT
_PAYLOAD_KEYS = ("config", "num_classes", "digest", "trained", "buffers")
#: Below this ratio of stored to total numbers the file is called compact.
_COMPACT_SHARE = 0.5


class CompactError(BnonlyError, ValueError):
    """A run that cannot be exported, or a compact file that is missing, damaged, foreign, or
    does not rebuild its run: the message says which, in one line."""


@dataclass
class Rebuilt:
    """The run's model at initialization, configured as training configured it (on the CPU)."""

    model: nn.Module
    selection: Selection
    params: list[str]
    """Plain parameter names, in ``named_parameters`` order (the order entries are stored in)."""
    buffers: list[str]
    """Plain buffer names (running statistics, step counters), in ``named_buffers`` order."""

    def trained(self) -> list[tuple[str, torch.Tensor | None]]:
        """(parameter, flat indices of its trained entries, or None for the whole tensor), for
        every parameter that trains. The indices are those the parametrization holds, so storing
        and writing back use the very entries training moved."""
        out = []
        for name in self.params:
            mask = self.selection.masks.get(name, False)
            if mask is True:
                out.append((name, None))
            elif isinstance(mask, torch.Tensor):
                out.append((name, self.entries(name).index))
        return out

    def scored(self) -> list[str]:
        """The weights under a supermask, in parameter order: their scores are stored after the
        trained entries."""
        return [name for name in self.params if name in self.selection.scored]

    def entries(self, name: str) -> TrainableEntries:
        """The parametrization that holds the trained entries of parameter ``name``."""
        module, _, pname = name.rpartition(".")
        return getattr(self.model.get_submodule(module).parametrizations, pname)[0]

    def supermask(self, name: str) -> Supermask:
        """The parametrization that holds the scores of weight ``name``."""
        return self.entries(name)


def rebuild(cfg: cfgmod.TrainConfig, num_classes: int) -> Rebuilt:
    """Build and configure the run's model the way ``training.build`` does, without its data."""
    model, selection = build_model(cfg, num_classes)
    # The plain architecture's parameter order (configure moves parametrized tensors elsewhere).
    params = [n for n, _ in create_model(cfg.model, num_classes, device="meta").named_parameters()]
    buffers = [n for n, _ in model.named_buffers() if "parametrizations." not in n]
    return Rebuilt(model, selection, params, buffers)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: equal digests, equal bits."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], *,
                     values: bool = True) -> str | None:
    """Where ``state`` first differs from ``reference`` (a sentence), or None: a name only one
    has, a dtype or shape, then (unless ``values`` is False) the bits of a tensor's entries."""
    for name in sorted(set(state) | set(reference)):
        if name not in state or name not in reference:
            return f"{name} is only in {'the rebuilt model' if name in state else 'the reference'}"
        a, b = state[name].detach().cpu(), reference[name].detach().cpu()
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{name} is {a.dtype} {tuple(a.shape)} rebuilt but {b.dtype} {tuple(b.shape)} in the reference"
    for name in sorted(state) if values else ():
        a, b = state[name].detach().cpu(), reference[name].detach().cpu()
        if not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
            return f"{name} differs in {max(int((a != b).sum()), 1):,} of {a.numel():,} entries"
    return None


def _pack(tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors flattened and concatenated, one flat tensor per dtype, in order."""
    groups: dict[str, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(str(t.dtype).removeprefix("torch."), []).append(t.detach().cpu().reshape(-1))
    return {dtype: torch.cat(parts) for dtype, parts in groups.items()}


def _unpack(packed: dict[str, torch.Tensor], like: list[torch.Tensor], where: str) -> list[torch.Tensor]:
    """Split what :func:`_pack` made back into tensors of the shapes and dtypes of ``like``."""
    offsets = dict.fromkeys(packed, 0)
    out = []
    for t in like:
        dtype = str(t.dtype).removeprefix("torch.")
        flat = packed.get(dtype)
        if flat is None or offsets[dtype] + t.numel() > flat.numel():
            raise CompactError(f"{where} holds fewer {dtype} numbers than its run's model needs; it was made for "
                               f"another model or another what-trains spec")
        out.append(flat[offsets[dtype]:offsets[dtype] + t.numel()].view(t.shape))
        offsets[dtype] += t.numel()
    if any(offsets[k] != v.numel() for k, v in packed.items()):
        raise CompactError(f"{where} holds more numbers than its run's model needs; it was made for another model "
                           f"or another what-trains spec")
    return out


def _slots(r: Rebuilt) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors the stored numbers go into: per trained parameter its tensor or its vector of
    trained entries, then the scores of every weight under a supermask; and every buffer."""
    params = [r.model.get_parameter(name) if index is None else r.entries(name).values for name, index in r.trained()]
    params += [r.supermask(name).scores for name in r.scored()]
    return params, [r.model.get_buffer(name) for name in r.buffers]


def _write_back(r: Rebuilt, trained: list[torch.Tensor], buffers: list[torch.Tensor]) -> None:
    params, bufs = _slots(r)
    with torch.no_grad():
        for slot, value in zip(params + bufs, trained + buffers):
            slot.copy_(value)


def _config(values: object, where: str) -> cfgmod.TrainConfig:
    """The run's TrainConfig, refused in one line when this bnonly cannot rebuild it."""
    if not isinstance(values, dict):
        raise CompactError(f"{where} holds no config")
    try:
        values = formats.config_fields(values, where)
    except BnonlyError as e:
        raise CompactError(str(e)) from None
    unknown = sorted(set(values) - set(cfgmod.field_names()))
    if unknown:
        raise CompactError(f"{where}: its config has field(s) {', '.join(unknown)} that this bnonly does not know "
                           f"(made by a newer version?)")
    try:
        cfg = cfgmod.from_dict(values)
    except BnonlyError as e:
        raise CompactError(f"{where}: its config is not valid here: {e}") from None
    try:
        create_model(cfg.model, cfg.num_classes, seed=None, device="meta")
    except BnonlyError:
        raise CompactError(f"{where}: its model {cfg.model!r} is not one this bnonly builds (`bnonly models` lists "
                           f"them); it cannot be rebuilt") from None
    try:
        parse_spec(cfg.train)
    except BnonlyError as e:
        raise CompactError(f"{where}: its what-trains spec cannot be used here: {e}") from None
    return cfg


def _rebuild(cfg: cfgmod.TrainConfig, num_classes: int, where: str) -> Rebuilt:
    try:
        return rebuild(cfg, num_classes)
    except BnonlyError as e:
        if cfg.init_from:
            raise CompactError(f"{where}: the run started from the weights of init_from={cfg.init_from!r}, which "
                               f"must be there to rebuild its frozen weights: {str(e).splitlines()[0]}") from None
        raise CompactError(f"{where}: cannot rebuild its model: {str(e).splitlines()[0]}") from None


def _num_classes(cfg: cfgmod.TrainConfig, final: dict[str, torch.Tensor]) -> int:
    """The run's output classes, read from its output layer in final.pt (no data needed)."""
    found = output_layer(create_model(cfg.model, cfg.num_classes, seed=None, device="meta"))
    if found is None or f"{found[0]}.weight" not in final:
        return cfg.num_classes or family_of(cfg.model).num_classes
    return final[f"{found[0]}.weight"].shape[0]


def _scores(run: RunDir, r: Rebuilt) -> list[torch.Tensor]:
    """A supermask run's final scores, in :meth:`Rebuilt.scored` order, from its scores.pt."""
    names = r.scored()
    if not names:
        return []
    if not run.scores.is_file():
        raise CompactError(f"cannot export {run.path}: it trained {r.selection.spec!r}, whose trained numbers are "
                           f"the supermask scores, and it has no scores.pt (final.pt holds only the masked "
                           f"weights); train it again with this bnonly to export it")
    scores = torch.load(run.scores, map_location="cpu", weights_only=True)
    misfit = first_difference(scores, score_state_dict(r.model), values=False)
    if misfit:
        raise CompactError(f"cannot export {run.path}: its scores.pt does not fit the model its config builds "
                           f"({misfit})")
    return [scores[name] for name in names]


@dataclass
class Exported:
    """What ``export`` wrote: sizes in bytes and counts of stored numbers."""

    path: Path
    bytes: int
    final_bytes: int
    trained: int
    buffers: int
    buffer_tensors: int
    total: int

    @property
    def compact(self) -> bool:
        return self.trained + self.buffers < _COMPACT_SHARE * self.total


def export(run_dir: str | Path, file: str | Path) -> Exported:
    """Write the compact form of the finished run ``run_dir`` to ``file``, after checking that
    it rebuilds final.pt bit for bit."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise CompactError(f"{run.path} is not a run folder (no config.json)")
    if not run.is_done():
        status = (run.read_summary() or {}).get("status", "no summary.json")
        raise CompactError(f"run {run.path} has not finished ({status}); launch it again to finish it, then export")
    if not run.final_weights.is_file():
        raise CompactError(f"run {run.path} finished but has no final.pt to export")
    values = run.read_config()
    cfg = _config(values, str(run.config))
    final = torch.load(run.final_weights, map_location="cpu", weights_only=True)
    num_classes = _num_classes(cfg, final)
    r = _rebuild(cfg, num_classes, str(run.path))
    misfit = first_difference(plain_state_dict(r.model), final, values=False)
    if misfit:
        raise CompactError(f"cannot export {run.path}: final.pt does not fit the model its config builds ({misfit})")
    trained = [final[name] if index is None else final[name].reshape(-1)[index]
               for name, index in r.trained()]
    trained += _scores(run, r)
    buffers = [final[name] for name in r.buffers]
    _write_back(r, trained, buffers)
    mismatch = first_difference(plain_state_dict(r.model), final)
    if mismatch:
        raise CompactError(f"cannot export {run.path}: its frozen weights are not re-derivable from its seed and "
                           f"spec here ({mismatch}), so a compact file could not rebuild it")
    payload = dict(format=FORMAT, torch=str(torch.__version__), config=values, summary=run.read_summary(),
                   num_classes=num_classes, run_dir=str(run.path.resolve()), digest=state_digest(final),
                   trained=_pack(trained), buffers=_pack(buffers))
    path = Path(file)
    size = write_compact(path, payload)
    return Exported(path, size, run.final_weights.stat().st_size,
                    trained=sum(t.numel() for t in trained), buffers=sum(t.numel() for t in buffers),
                    buffer_tensors=len(buffers), total=sum(t.numel() for t in final.values()))


def write_compact(path: Path, payload: dict) -> int:
    """Write ``payload`` as a compact file (atomically); returns its size in bytes."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = zlib.compress(buffer.getvalue(), 9)
    header = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"
    atomic_write_bytes(path, lambda f: (f.write(header), f.write(body)))
    return len(header) + len(body)


def read_compact(file: str | Path) -> dict:
    """The payload of a compact file, refused when it is missing, foreign or damaged."""
    path = Path(file)
    if not path.is_file():
        raise CompactError(f"compact file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CompactError(f"{path} is not a bnonly compact file (it does not start with {MAGIC.decode()!r}); "
                           f"make one with `bnonly export RUN_DIR --compact FILE`")
    header, _, body = data.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != header[len(MAGIC):]:
        raise CompactError(f"{path} is damaged: its content does not match the SHA-256 written with it "
                           f"(truncated or changed since export); export the run again")
    try:
        payload = torch.load(io.BytesIO(zlib.decompress(body)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the file is unusable
        raise CompactError(f"{path} is damaged: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    try:
        formats.found_format("compact", payload, str(path))
    except formats.FormatError as e:
        raise CompactError(str(e)) from None
    missing = [key for key in _PAYLOAD_KEYS if key not in payload]
    if missing:
        raise CompactError(f"{path} lacks {', '.join(missing)}; it was not written by `bnonly export`")
    return payload


@dataclass
class Compact:
    """A run rebuilt from its compact file: the trained model (configured as in training, on the
    CPU), its config and summary, its state at initialization, and what it was checked against."""

    model: nn.Module
    cfg: cfgmod.TrainConfig
    config: dict
    summary: dict
    num_classes: int
    init_state: dict[str, torch.Tensor]
    checked_against: str

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The final weights, as final.pt holds them (plain architecture's keys)."""
        return plain_state_dict(self.model)


def _reference(payload: dict, final: str | Path | None) -> Path | None:
    """The final.pt to check against: ``final`` (a file or a run folder), else the exported
    run's when it is still there, else None."""
    if final is None:
        default = RunDir(payload.get("run_dir", "")).final_weights
        return default if payload.get("run_dir") and default.is_file() else None
    path = Path(final)
    path = RunDir(path).final_weights if path.is_dir() else path
    if not path.is_file():
        raise CompactError(f"final.pt to check against: {path} does not exist")
    return path


def load_compact(file: str | Path, *, final: str | Path | None = None) -> Compact:
    """Rebuild the run stored in compact ``file`` and check it bit for bit.

    The check is against ``final`` (a final.pt or a run folder) if given, else against the
    exported run's final.pt if it is still where export found it, else against the digest of
    final.pt stored at export. Raises :class:`CompactError` naming the first tensor that differs.
    """
    where = str(file)
    payload = read_compact(file)
    cfg = _config(payload.get("config"), where)
    r = _rebuild(cfg, int(payload["num_classes"]), where)
    init_state = plain_state_dict(r.model)
    params, bufs = _slots(r)
    trained = _unpack(payload["trained"], [p.detach() for p in params], where)
    buffers = _unpack(payload["buffers"], [b.detach() for b in bufs], where)
    _write_back(r, trained, buffers)
    state = plain_state_dict(r.model)
    reference = _reference(payload, final)
    if reference is not None:
        mismatch = first_difference(state, torch.load(reference, map_location="cpu", weights_only=True))
        if mismatch:
            raise CompactError(f"{where} does not rebuild {reference} bit for bit: {mismatch}")
        checked = f"bit for bit against {reference}"
    else:
        if state_digest(state) != payload["digest"]:
            raise CompactError(f"{where}: the model rebuilt here differs from the exported run's final.pt (SHA-256 "
                               f"of the state); its frozen weights do not re-derive from the seed with torch "
                               f"{torch.__version__} (exported with torch {payload.get('torch')})")
        checked = "bit for bit against the SHA-256 of final.pt stored at export"
    r.model.eval()
    summary = formats.upgrade_summary(payload["summary"], where) if payload.get("summary") else {}
    return Compact(r.model, cfg, cfg.to_dict(), summary, int(payload["num_classes"]), init_state, checked)


def import_run(file: str | Path, out: str | Path, *, final: str | Path | None = None) -> Path:
    """Write the run stored in compact ``file`` as a finished run folder ``out`` (config.json,
    init.pt, final.pt, summary.json with status "done" and an ``imported`` note), which
    ``bnonly analyze`` and ``bnonly report`` read like any other. ``out`` must be new or empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompactError(f"--out {out} already exists and is not an empty folder; import into a new folder")
    check_writable(out, "--out")
    loaded = load_compact(file, final=final)
    run = RunDir(out)
    run.write_config(loaded.config)
    atomic_torch_save(run.init_weights, loaded.init_state)
    atomic_torch_save(run.final_weights, loaded.state)
    scores = score_state_dict(loaded.model)
    if scores:
        atomic_torch_save(run.scores, scores)
    note = (f"imported from the compact file {Path(file).resolve()}: weights rebuilt from the seed and the stored "
            f"trained entries, checked {loaded.checked_against}; no metrics.jsonl or checkpoints")
    run.write_summary(dict(loaded.summary, status="done", run_dir=str(out),
                                        imported=dict(source=str(Path(file).resolve()), note=note)))
    return out


def _kb(n: int) -> str:
    return f"{n / 1000:,.1f} kB" if n < 10**6 else f"{n / 1e6:,.1f} MB"


def cmd_export(args) -> int:
    e = export(args.run_dir, args.compact)
    print(f"wrote {e.path}: {_kb(e.bytes)} ({e.bytes:,} bytes; final.pt {_kb(e.final_bytes)}, "
          f"{e.final_bytes / e.bytes:,.0f}x larger): config and seed, {e.trained:,} trained numbers, and "
          f"{e.buffers:,} numbers of {e.buffer_tensors} buffers (BatchNorm running statistics and step counters: "
          f"not trained, but needed to evaluate)")
    if not e.compact:
        print(f"note: {e.trained + e.buffers:,} of the model's {e.total:,} numbers train or are buffers, so this "
              f"file is not compact: it is final.pt in another form")
    return 0


def cmd_import(args) -> int:
    out = import_run(args.file, args.out, final=args.final)
    print(f"imported {args.file} -> {out} (a finished run folder: bnonly analyze/report read it)")
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("export", help="write a finished run in kilobytes: seed, config, trained entries only",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    p.add_argument("--compact", required=True, metavar="FILE", help="the compact file to write")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="make a finished run folder from a compact file (checked bit for bit)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a file written by `bnonly export RUN_DIR --compact FILE`")
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder to create (new or empty)")
    p.add_argument("--final", default=None, metavar="PATH",
                   help="check against this final.pt (or run folder) instead of the exported run's, if still there")
    p.set_defaults(func=cmd_import)
