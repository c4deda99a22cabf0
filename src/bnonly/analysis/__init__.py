"""What normalization learned in one finished run, as registered evaluators: γ/β statistics,
disabled features, ablation, and whatever analyses you register.

``bnonly analyze RUN_DIR`` writes ``analysis.json`` and ``analysis_*.png`` into the run folder;
``bnonly report`` turns the numbers each evaluator declares into table columns.

Modules: ``evaluators`` (the registry, :class:`Column`, :class:`AnalysisContext`, running them),
``builtin`` (the built-in evaluators), ``features`` (which layers, where their outputs go, hooks),
``stats``, ``runs`` (run folders, analysis.json on disk, old formats), ``figures``, ``cli``.

Definitions (docs/analysis-reports.md documents the JSON; docs/formats.md its schema):

* Normalization layers are found by module type (:func:`~bnonly.analysis.features.is_normalizer`:
  every kind of ``bnonly.layers.NORM_TYPES``: BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
  RMSNorm), so any model works. A layer without γ or β counts as γ = 1, β = 0 (RMSNorm has no β).
* A *feature* is one entry of a layer's γ: one channel of a BatchNorm, GroupNorm or InstanceNorm;
  one hidden unit of a LayerNorm or RMSNorm over features.
* Small γ: ``|γ| < t`` for each threshold ``t`` (default 0.01, 0.05, 0.1).
* Where the output goes, found by tracing the model with ``torch.fx`` (the data flow, not module
  names; modules without a normalizer or activation inside are not traced into): *ReLU-fed* when
  it goes only into ReLU-like activations of one kind (through layout ops such as permute or
  reshape at most); *other* when it reaches them only through a residual sum (in a ResNet: a
  block's second norm and its shortcut norm); *not applicable* when it goes anywhere else first
  (a ViT's pre-norm LayerNorm feeds attention and linear layers), or where fx cannot trace the
  model around it (a model it cannot trace whole is traced in the largest parts it can). The
  ReLU-like activations (:data:`~bnonly.analysis.features.ACTIVATIONS`) and what "off" means for each:

  - ReLU (and ReLU6): the norm output is ``<= 0``, so the ReLU output is exactly 0;
  - GELU: the norm output is ``<= -3``, where ``|GELU(x)| <= 0.0041`` (GELU(-3) = -3·Φ(-3)
    = -0.00405, 0.5% of GELU(1)); GELU is 0 only at 0 and as x → -∞.

* *Off share* of a feature: the share of test inputs for which its output is off at every position
  of the input (every spatial position of an image; every token of a sequence, i.e. a ViT
  feature is off for an image when it is off for all of its tokens). For a ReLU-fed layer that is
  exactly the post-activation feature being (about) zero. For an *other* layer it means "this
  feature never adds anything that would pass the activation to the sum".
* *Disabled* (or dead): off share ``>= dead_share`` (default 0.99). Fractions are over the
  features where disabled features are measured (every feature of a CNN whose norms all feed
  ReLUs, directly or through a sum); a model with none has ``null`` and a ``not_applicable`` reason.
* Ablation: the disabled features' outputs are set to zero (forward hooks) and test accuracy
  is measured again; then as many features drawn uniformly at random from the measured features
  (several seeded draws) are zeroed instead. Features training has disabled should cost almost
  nothing; random ones should hurt. The same comparison is made within the ReLU-fed layers alone
  and within the other layers alone (random draws from that kind's features), which shows where
  the cost of the combined ablation comes from. A zeroed feature of a GELU-fed layer gives GELU(0)
  = 0 exactly, as a ReLU-fed one gives ReLU(0) = 0.

Accuracy always comes from :func:`bnonly.training.evaluate` with ``final.pt`` as the run saved it:
its BatchNorm running statistics are the ones the run's last evaluation used (recalibrated ones
after ``recalibrate_bn``; the initial ones, never updated, after ``bn_stats=frozen``), so the
baseline is the run's own test accuracy. The off shares are counted by hooks during the baseline
evaluation itself, so one pass over the test set serves both.

analysis.json (format 3)::

    {"format": 3, "run": ..., "model": ..., "train": ..., "seed": ..., "epochs": ..., "bn_affine": ...,
     "gamma_init": ..., "bn_statistics": {"train": ..., "eval": ...}, "dataset": ..., "num_classes": ...,
     "summary_test_acc": ...,
     "sections": {"<evaluator>": {"version": 2, "options": {<the options it reads>}, "seconds": 0.4,
                                  <what its compute function returned>}, ...}}

Built-in sections (version 2; a section that does not apply holds ``not_applicable``, the reason,
and nulls): ``affine`` (options: thresholds) n_layers, n_features, fraction_gamma_below, overall,
layers (per layer: type, kind, num_features, statistics of γ, β, initial γ; per-feature γ, β,
initial γ, β); ``disabled`` (thresholds, dead_share) test (the baseline evaluation), traced (fx
traced the whole model), untraced (part -> error, "" the whole model), norms ("BNs" or "norms"),
criteria (activation -> criterion, for those the model's norms feed), n_features, n_measured,
n_dead, fraction_dead, n_relu_fed_features, n_dead_relu_fed, fraction_dead_relu_fed,
dead_relation, layers (per layer: destination, activation, not_applicable, n_dead, fraction_dead,
dead_channels, per-feature off_share); ``ablation`` (draws, seed; needs disabled) the ablation with
by_destination. A section is recomputed when its evaluator's version or options differ, or a
section it needs is recomputed; the rest are kept, and so are sections of evaluators not
registered now. Version-1 sections (BatchNorm only) still read, and are redone by the next
``bnonly analyze``; older files (format 1 and 2, one flat object) are migrated when read
(:func:`~bnonly.analysis.runs.migrate`).

Adding an analysis, from your own code::

    import torch
    from bnonly.analysis import Column, affine_values, evaluator

    @evaluator("negative_gamma", version=1,
               columns=[Column("fraction_negative_gamma", lambda s: s["fraction"], "γ < 0")])
    def negative_gamma(ctx, options):
        \"\"\"Share of normalization features whose γ is negative.\"\"\"
        gamma = torch.cat([affine_values(m)[0] for _, m in ctx.layers])
        return {"fraction": (gamma < 0).double().mean().item()}

Then ``bnonly analyze`` adds the section to every run (the others are kept), and ``bnonly report``
shows the column in its "What BatchNorm learned" table and in runs.csv/groups.csv.
"""

from .builtin import ablation  # importing builtin registers the built-in evaluators
from .cli import add_subcommand, parse_thresholds, summary_line
from .errors import AnalysisError, WeightsAbsent
from .evaluators import (
                         DEFAULT_DEAD_SHARE,
                         DEFAULT_DRAWS,
                         DEFAULT_THRESHOLDS,
                         EVALUATORS,
                         REPORT_TABLES,
                         AnalysisContext,
                         Column,
                         Evaluator,
                         analysis_options,
                         analyze_model,
                         column_values,
                         evaluator,
                         not_applicable_column,
                         stale_sections,
)
from .features import (
                         ACTIVATIONS,
                         DESTINATION_LABELS,
                         Activation,
                         Destination,
                         OffCounter,
                         affine_values,
                         destination_label,
                         destinations,
                         feature_count,
                         is_normalizer,
                         is_relu_like,
                         norm_kind,
                         norm_layers,
                         normalizer_name,
                         norms_word,
                         random_masks,
                         zeroed_features,
)
from .figures import channels, plot_run, pyplot
from .runs import (
                         ANALYSIS_FILE,
                         FORMAT_VERSION,
                         PRE_RECORD_BN_STATISTICS,
                         LoadedRun,
                         analyze_run,
                         finished_runs,
                         load_trained,
                         migrate,
                         read_analysis,
)
from .stats import describe, fraction_below, threshold_key

__all__ = [
    "ACTIVATIONS", "ANALYSIS_FILE", "Activation", "AnalysisContext", "AnalysisError", "Column", "DEFAULT_DEAD_SHARE",
    "DEFAULT_DRAWS", "DEFAULT_THRESHOLDS", "DESTINATION_LABELS", "Destination", "EVALUATORS", "Evaluator",
    "FORMAT_VERSION", "LoadedRun", "OffCounter", "PRE_RECORD_BN_STATISTICS", "REPORT_TABLES", "WeightsAbsent",
    "ablation", "add_subcommand", "affine_values", "analysis_options", "analyze_model", "analyze_run", "channels",
    "column_values", "describe", "destination_label", "destinations", "evaluator", "feature_count", "finished_runs",
    "fraction_below", "is_normalizer", "is_relu_like", "load_trained", "migrate", "norm_kind", "norm_layers",
    "normalizer_name", "norms_word", "not_applicable_column", "parse_thresholds", "plot_run", "pyplot",
    "random_masks", "read_analysis", "stale_sections", "summary_line", "threshold_key", "zeroed_features",
]
