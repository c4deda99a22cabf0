"""bnonly: train only BatchNorm's affine parameters of random CNNs, and compare honestly.

The Python API does everything the ``bnonly`` command does::

    import bnonly
    model = bnonly.create_model("cifar_resnet_110", seed=0)      # paper init: Kaiming, γ ~ U[0,1]
    bnonly.configure(model, "bn")                                # only γ and β train
    summary = bnonly.train(bnonly.TrainConfig(model="cifar_resnet_14", train="bn",
                                              data="../shared/data/cifar10-jpeg", epochs=10))
"""

from .config import PRESETS, ConfigError, TrainConfig, resolve
from .data import DataError, make_batches, open_dataset
from .models import create_model, initialize, list_models
from .trainable import SpecError, configure, plain_state_dict, select, trainable_parameters
from .training import build, evaluate, train
from .compact import load_compact

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "ConfigError", "DataError", "SpecError", "TrainConfig", "build", "configure", "create_model",
    "evaluate", "initialize", "list_models", "make_batches", "open_dataset", "plain_state_dict", "resolve",
    "select", "train", "trainable_parameters",
]
