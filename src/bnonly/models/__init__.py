"""Model registry: ``create_model("cifar_resnet_20")`` builds and initializes a network by name.

Families register themselves in :data:`MODEL_FAMILIES` on import (see ``models/registry.py``); the
distributions of the conv/linear weights are registered in :data:`WEIGHT_INITS` (``models/init.py``).
"""

# The families register in this order, which is the order `bnonly models` lists them in.
# isort: off
from bnonly.models import cifar_resnet, cifar_vgg, imagenet_resnet, vit, mlp  # noqa: F401  (registers the families)
# isort: on
from bnonly.models.init import GAMMA_INITS, WEIGHT_INITS, initialize
from bnonly.models.registry import (
    MODEL_FAMILIES,
    ModelFamily,
    ModelNameError,
    create_model,
    family_of,
    list_models,
    model_families,
)

__all__ = ["GAMMA_INITS", "MODEL_FAMILIES", "WEIGHT_INITS", "ModelFamily", "ModelNameError", "create_model",
           "family_of", "initialize", "list_models", "model_families"]
