"""Layer kinds, recognized by module type and never by name: which modules are normalization
layers, BatchNorm layers, weight layers and the output layer.

Initialization (``models/init.py``), what trains (``trainable``) and the parameter counts all ask
here, so they agree by construction: the ``norm`` term trains exactly the layers whose γ and β
the initializer draws, and the random baselines draw from exactly the weights it Kaiming-inits.
Every reference to a private torch base class lives in this module.

A module's own parameters that belong to no layer kind here (a ViT's class token and position
embedding, the no-norm ResNet's branch scale) are *bare parameters*: they are neither
normalization affine nor conv/linear weights or biases, so only the ``all`` term trains them, the
random baselines never draw from them (they draw from ``WEIGHT_TYPES`` only), and the initializer
leaves them to the module that owns them (``init_own_parameters``, see ``models/init.py``).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

#: Every normalization layer that can hold γ (``weight``) and β (``bias``): BatchNorm1d/2d/3d,
#: SyncBatchNorm and InstanceNorm1d/2d/3d (all ``_NormBase``), GroupNorm, LayerNorm and RMSNorm
#: (γ only; torch >= 2.4). LocalResponseNorm has no parameters, so it is not one.
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
#: BatchNorm1d/2d/3d, SyncBatchNorm and their lazy forms: the layers the paper trains.
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm,)
#: Normalization layers that may keep running statistics (BatchNorm, InstanceNorm).
RUNNING_STATS_TYPES: tuple[type[nn.Module], ...] = (_NormBase,)
#: Conv and linear layers (attention's q/k/v and output projections are nn.Linear): what the weight
#: distributions of ``models/init.py`` fill, what the random baselines draw weights from, and whose
#: biases the ``bias`` term trains.
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: The attribute names of γ and β on every normalization layer.
AFFINE = ("weight", "bias")


def qualified_name(module_name: str, param_name: str) -> str:
    """``model.named_parameters()``'s name for ``param_name`` of the module called ``module_name``."""
    return f"{module_name}.{param_name}" if module_name else param_name


def layers_of(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module of ``types``, in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return layers_of(model, WEIGHT_TYPES)


def output_layer(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The output layer: the last ``nn.Linear`` in module order (None if there is none)."""
    found = layers_of(model, (nn.Linear,))
    return found[-1] if found else None


def affine_params(model: nn.Module, types: tuple[type[nn.Module], ...] = NORM_TYPES,
                  which: tuple[str, ...] = AFFINE) -> list[str]:
    """Parameter names of γ and/or β (``which``) of the layers of ``types`` that have them
    (a layer built with ``affine=False`` has neither)."""
    return [qualified_name(mname, pname) for mname, module in layers_of(model, types)
            for pname in which if isinstance(getattr(module, pname, None), nn.Parameter)]


def norm_affine_params(model: nn.Module) -> list[str]:
    """Names of every normalization layer's γ and β: what the ``norm`` term trains."""
    return affine_params(model, NORM_TYPES)


def weight_biases(model: nn.Module) -> list[str]:
    """Names of every conv/linear bias (layers built with ``bias=False`` have none): what the
    ``bias`` term trains (BitFit, Ben Zaken et al. 2022)."""
    return [qualified_name(mname, "bias") for mname, layer in weight_layers(model)
            if isinstance(layer.bias, nn.Parameter)]


def norm_param_count(model: nn.Module) -> int:
    """Number of γ and β entries of every normalization layer: what ``norm`` trains (RMSNorm and a
    LayerNorm without bias count their γ only)."""
    return sum(getattr(module, pname).numel() for _, module in layers_of(model, NORM_TYPES) for pname in AFFINE
               if isinstance(getattr(module, pname, None), nn.Parameter))


def bn_param_count(model: nn.Module) -> int:
    """Number of BatchNorm γ+β entries (the count the random baselines match)."""
    return sum(2 * m.num_features for _, m in layers_of(model, BATCHNORM_TYPES) if m.affine)
