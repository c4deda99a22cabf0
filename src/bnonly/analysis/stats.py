"""Summary statistics of γ, β and per-channel values, in the forms analysis.json stores them."""

from __future__ import annotations

import torch


def describe(values: torch.Tensor) -> dict:
    """Mean, population std and quantiles of a 1-D tensor (None values for an empty one)."""
    v = values.detach().double().flatten().cpu()
    keys = ("mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max")
    if v.numel() == 0:
        return dict(n=0, **{k: None for k in keys})
    q = torch.quantile(v, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
    return dict(n=v.numel(), mean=v.mean().item(), std=v.std(correction=0).item(), min=v.min().item(),
                q05=q[0], q25=q[1], median=q[2], q75=q[3], q95=q[4], max=v.max().item())


def threshold_key(t: float) -> str:
    """JSON key of a threshold: ``0.05 -> "0.05"``."""
    return format(t, "g")


def fraction_below(values: torch.Tensor, thresholds) -> dict[str, float]:
    """Threshold -> share of ``|values| < threshold``."""
    a = values.detach().abs().flatten()
    return {threshold_key(t): (a < t).double().mean().item() if a.numel() else None for t in thresholds}


def share(mask: torch.Tensor, within: torch.Tensor) -> float | None:
    """Share of ``mask`` among the entries where ``within`` holds (None if there are none)."""
    n = int(within.sum())
    return int((mask & within).sum()) / n if n else None


def compact(t: torch.Tensor) -> list[float]:
    """Per-channel values for JSON, at 6 significant digits (keeps analysis.json small)."""
    return [float(f"{x:.6g}") for x in t.tolist()]
