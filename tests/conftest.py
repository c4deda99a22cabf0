"""What many test files share: tiny runs on synthetic data (a second or two on one CPU thread), and
a callback that stops a run the way a user's Ctrl-C or Slurm's SIGUSR2 would.

Test files import these by name (``from conftest import TINY, QUIET, SignalAt``) and override
the few fields they care about: ``dict(TINY, epochs=4, milestones=(2, 3), schedule_epochs=4)``.
"""

import os
import signal

import pytest
import torch

from bnonly.training import Callback


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global torch RNG state, so a module a test builds without
    a seed (``nn.Linear(12, 6)``) has the same weights whichever tests ran before it: a test's
    outcome never depends on the order or the selection of tests (-k, -m, a second CI pass)."""
    torch.manual_seed(0)

DATA = "synthetic:train=256,test=128,classes=4,size=16"
"""4 learnable classes of 16x16 images: 8 batches of 32 per epoch."""
SMALL_DATA = "synthetic:train=128,test=64,classes=4,size=16"

TINY = dict(model="cifar_resnet_8_8", data=DATA, batch_size=32, epochs=2, milestones=(1,), schedule_epochs=2,
            augment="none", progress=False, device="cpu", threads=1)
"""A 2-epoch BN-only run of a width-8 ResNet-8, lr x0.1 after epoch 1, on the CPU at one thread
(pinned, so rounding is the same whatever --jobs or machine load)."""

QUIET = dict(log=lambda *_: None)


class SignalAt(Callback):
    """Sends ``sig`` to this process at the end of each of the given steps (absolute step numbers,
    so the same callback works across a run's launches)."""

    def __init__(self, steps, sig=signal.SIGINT):
        self.steps, self.sig = set(steps), sig

    def on_step_end(self, loop, out) -> None:
        if loop.step in self.steps:
            os.kill(os.getpid(), self.sig)
