"""Test-set evaluation: loss, top-1 and top-5 with the running BatchNorm statistics."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device``, or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def evaluate(model: nn.Module, batches, *, bf16: bool, device: torch.device, across_ranks: bool = False) -> dict:
    """Test loss, top-1 and top-5 accuracy (fractions) with running BN statistics.

    ``across_ranks``: ``batches`` is this rank's shard; the counts are summed over ranks.
    A compiled model is evaluated eagerly: eval mode and the test batch size would each make
    torch.compile build (and on CUDA, graph-capture) a second model, which costs more than a
    forward-only pass over the test set saves.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    with torch.no_grad(), autocast(device, bf16), torch.compiler.set_stance("force_eager"):
        for x, y in batches.batches(0):
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            k = min(5, logits.shape[1])
            best = logits.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum()
            top5 += (best == y[:, None]).any(dim=1).sum()
            n += len(y)
    model.train(was_training)
    if across_ranks:
        totals = distributed.all_sum(torch.stack([loss_sum, top1.double(), top5.double(),
                                                  torch.tensor(float(n), dtype=torch.float64, device=device)]))
        loss_sum, top1, top5, n = totals[0], totals[1].long(), totals[2].long(), int(totals[3])
    return dict(test_loss=float(loss_sum) / n, test_acc=int(top1) / n, test_top5=int(top5) / n)
