#!/usr/bin/env python3
"""What a BN-only step keeps for its backward, by the autograd node that keeps it.

A frozen conv needs only its weight for the input gradient, so a custom conv that does not
save its input could save memory, but only the bytes that *no other* node keeps too. This
walks the autograd graph after one forward and reports the saved activations, those a
convolution node references, and those only convolution nodes reference.

    python benchmarks/saved_activations.py [--model cifar_resnet_20] [--batch-size 128]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

from bnonly.models import create_model
from bnonly.trainable import configure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--train", default="bn")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    model = create_model(args.model, 10, seed=0)
    configure(model, args.train, 0)
    model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = F.cross_entropy(model(x), torch.zeros(args.batch_size, dtype=torch.long))
    owners, sizes = defaultdict(set), {}
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                value = getattr(node, attr, None)
                if isinstance(value, torch.Tensor):
                    storage = value.untyped_storage()
                    owners[storage.data_ptr()].add(type(node).__name__)
                    sizes[storage.data_ptr()] = storage.nbytes()
        todo += [f for f, _ in node.next_functions]
    frozen = {p.untyped_storage().data_ptr() for p in model.parameters() if not p.requires_grad}
    mib = lambda keys: sum(sizes[k] for k in keys) / 2**20  # noqa: E731
    conv = [k for k, o in owners.items() if "ConvolutionBackward0" in o and k not in frozen]
    only_conv = [k for k in conv if owners[k] == {"ConvolutionBackward0"}]
    print(f"{args.model} train={args.train} batch {args.batch_size}: saved tensors {mib(owners):.1f} MiB "
          f"(frozen weights {mib(k for k in owners if k in frozen):.1f} MiB); activations a convolution keeps "
          f"{mib(conv):.1f} MiB, of which only convolutions keep {mib(only_conv):.1f} MiB")


if __name__ == "__main__":
    main()
