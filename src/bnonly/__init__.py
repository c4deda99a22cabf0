"""bnonly: train only BatchNorm's affine parameters of random CNNs, and compare honestly.

The Python API does everything the ``bnonly`` command does::

    import bnonly
    model = bnonly.create_model("cifar_resnet_110", seed=0)      # paper init: Kaiming, γ ~ U[0,1]
    bnonly.configure(model, "bn")                                # only γ and β train
    summary = bnonly.train(bnonly.TrainConfig(model="cifar_resnet_14", train="bn",
                                              data="../shared/data/cifar10-jpeg", epochs=10))
"""

from ._version import __version__
from .compact import load_compact
from .config import PRESETS, ConfigError, TrainConfig, resolve
from .data import DATA_FORMATS, DataError, make_batches, open_dataset
from .formats import schema
from .models import MODEL_FAMILIES, WEIGHT_INITS, create_model, initialize, list_models
from .records import RunRecord, load_run
from .trainable import TERMS, SpecError, configure, plain_state_dict, select, trainable_parameters
from .training import OBJECTIVES, OPTIMIZERS, Callback, build, evaluate, train

__all__ = [
    "DATA_FORMATS", "MODEL_FAMILIES", "OBJECTIVES", "OPTIMIZERS", "PRESETS", "TERMS", "WEIGHT_INITS", "Callback",
    "ConfigError", "DataError", "RunRecord", "SpecError", "TrainConfig", "__version__", "build", "configure",
    "create_model", "evaluate", "initialize", "list_models", "load_compact", "load_run", "make_batches", "open_dataset",
    "plain_state_dict", "resolve", "schema", "select", "train", "trainable_parameters",
]
