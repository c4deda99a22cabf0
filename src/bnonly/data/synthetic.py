"""A deterministic synthetic dataset for smoke tests: ``synthetic`` or ``synthetic:key=value,...``.

Each class has its own smooth coloured pattern; an image is its class pattern plus per-image
brightness and pixel noise. A tiny model learns it well above chance within a few epochs, and
the same seed always gives the same bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .arrays import ArrayDataset
from .errors import DataError

SYNTHETIC_DEFAULTS = {"train": 512, "test": 256, "classes": 10, "size": 32, "seed": 0}
_PATTERN_CELLS = 4
_NOISE_STD = 40.0
_BRIGHTNESS_STD = 16.0


def parse_synthetic(spec: str) -> dict[str, int]:
    """``synthetic:train=1000,classes=4`` -> the full option dict, defaults filled in."""
    options = dict(SYNTHETIC_DEFAULTS)
    _, _, rest = spec.partition(":")
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in options:
            raise DataError(
                f"bad synthetic option '{item}' in '{spec}': expected key=value with key one of "
                f"{', '.join(SYNTHETIC_DEFAULTS)}, e.g. 'synthetic:train=512,test=256,classes=10,size=32,seed=0'."
            )
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(f"synthetic option {key}={value!r} in '{spec}' must be an integer.") from None
    for key in ("train", "test", "classes", "size"):
        if options[key] < 1:
            raise DataError(f"synthetic option {key} must be at least 1, got {options[key]} in '{spec}'.")
    if options["seed"] < 0:
        raise DataError(f"synthetic option seed must be non-negative, got {options['seed']} in '{spec}'.")
    return options


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def _draw(n: int, patterns: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    classes, _, size, _ = patterns.shape
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    brightness = torch.randn(n, 1, 1, 1, generator=gen) * _BRIGHTNESS_STD
    noise = torch.randn(n, 3, size, size, generator=gen) * _NOISE_STD
    images = (patterns[labels] + brightness + noise).round().clamp(0, 255).to(torch.uint8)
    return images.contiguous(), labels


def make_synthetic(train: int, test: int, classes: int, size: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    cells = torch.rand(classes, 3, _PATTERN_CELLS, _PATTERN_CELLS, generator=_generator(seed, 0))
    patterns = 64 + 128 * F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)
    names = [f"class{i}" for i in range(classes)]
    train_x, train_y = _draw(train, patterns, _generator(seed, 1))
    test_x, test_y = _draw(test, patterns, _generator(seed, 2))
    return ArrayDataset(train_x, train_y, names), ArrayDataset(test_x, test_y, names)
