"""Which parameters train: a small, composable spec turned into per-entry masks.

A spec is one or more registered terms joined by ``+`` (a union): ``bn``, ``bn+output``,
``random:matched``, ... (:func:`term_table_markdown` lists them all; ``spec.py`` shows how to add
one). Layers are found by module type, never by name (``bnonly.layers``), so any ``nn.Module``
works. Random subsets are drawn from an explicit seed. A tensor that trains only in part is
re-expressed as its frozen values plus a small trainable vector of the selected entries
(``apply.py``), so frozen entries are not parameters at all. ``supermask:P`` (``supermask.py``)
trains a score per conv/linear weight instead and keeps each layer's top P% of weights.
"""

from ..layers import bn_param_count
from .apply import (
    PARAMETRIZATIONS,
    TrainableEntries,
    apply_selection,
    configure,
    count_trainable,
    disable_bn_affine,
    layer_breakdown,
    plain_state_dict,
    score_state_dict,
    supermasks,
    trainable_parameters,
)
from .spec import TERMS, SelectContext, Selection, SpecError, parse_spec, select, spec_help, term_table_markdown
from .supermask import Scored, Supermask, kept_count, topk_mask
from .terms import SPEC_HELP, matched_count, output_layer  # importing terms registers the built-in terms

__all__ = [
    "PARAMETRIZATIONS", "SPEC_HELP", "Scored", "SelectContext", "Selection", "SpecError", "Supermask", "TERMS",
    "TrainableEntries", "apply_selection", "bn_param_count", "configure", "count_trainable", "disable_bn_affine",
    "kept_count", "layer_breakdown", "matched_count", "output_layer", "parse_spec", "plain_state_dict",
    "score_state_dict", "select", "spec_help", "supermasks", "term_table_markdown", "topk_mask",
    "trainable_parameters",
]
