"""Model registry: ``create_model("cifar_resnet_20")`` builds and initializes a network by name.

Families register themselves on import; add one with :func:`register_family`.
"""

from bnonly.models import cifar_resnet, cifar_vgg, imagenet_resnet  # noqa: F401  (registers the families)
from bnonly.models.init import GAMMA_INITS, initialize
from bnonly.models.registry import ModelNameError, create_model, list_models, register_family

__all__ = ["GAMMA_INITS", "ModelNameError", "create_model", "initialize", "list_models", "register_family"]
