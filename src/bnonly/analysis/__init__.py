"""What BatchNorm learned in one finished run, as registered evaluators: γ/β statistics, disabled
features, ablation, and whatever analyses you register.

``bnonly analyze RUN_DIR`` writes ``analysis.json`` and ``analysis_*.png`` into the run folder;
``bnonly report`` turns the numbers each evaluator declares into table columns.

Modules: ``evaluators`` (the registry, :class:`Column`, :class:`AnalysisContext`, running them),
``builtin`` (the built-in evaluators), ``features`` (which layers, where their outputs go, hooks),
``stats``, ``runs`` (run folders, analysis.json on disk, old formats), ``figures``, ``cli``.

Definitions (the README's analysis section documents the JSON):

* BN layers are found by module type (:func:`~bnonly.analysis.features.is_normalizer`), so any
  model works. A layer without affine parameters counts as γ = 1, β = 0.
* A *feature* is one channel of one BN layer.
* Small γ: ``|γ| < t`` for each threshold ``t`` (default 0.01, 0.05, 0.1).
* *Off share* of a feature: the share of test inputs for which ``ReLU(BN(x))`` of that channel
  is zero at every spatial position, i.e. the BN output is ``<= 0`` everywhere. The ReLU is
  applied to the BN's own output, whatever the model does next. For a BN that feeds a ReLU
  directly (the CIFAR ResNet stem BN and every block's first BN, every VGG BN) that is exactly
  the post-ReLU feature. For a BN that feeds a residual sum first (a block's second BN and its
  shortcut BN) it means "this channel never adds anything positive to the sum".
* *Disabled* (or dead): off share ``>= dead_share`` (default 0.99).
* *ReLU-fed* BN: one whose output is used only by ReLUs, found by tracing the model with
  ``torch.fx``. Zeroing a disabled feature of a ReLU-fed BN changes the ReLU's output only on the
  < 1 - dead_share of inputs where it was on. A BN whose output goes elsewhere first (in a ResNet:
  a block's second BN and its shortcut BN, which feed the residual sum) is *other*: there a
  disabled channel only never adds anything positive, and zeroing it removes a negative
  contribution to the sum. A model fx cannot trace gets no split (``null`` in analysis.json).
* Ablation: the disabled features' BN outputs are set to zero (forward hooks) and test accuracy
  is measured again; then as many features drawn uniformly at random from all BN features
  (several seeded draws) are zeroed instead. Features training has disabled should cost almost
  nothing; random ones should hurt. The same comparison is made within the ReLU-fed BNs alone
  and within the other BNs alone (random draws from that kind's features), which shows where the
  cost of the combined ablation comes from.

Accuracy always comes from :func:`bnonly.training.evaluate`; the off shares are counted by hooks
during the baseline evaluation itself, so one pass over the test set serves both.

analysis.json (format 3)::

    {"format": 3, "run": ..., "model": ..., "train": ..., "seed": ..., "epochs": ..., "bn_affine": ...,
     "gamma_init": ..., "dataset": ..., "num_classes": ..., "summary_test_acc": ...,
     "sections": {"<evaluator>": {"version": 1, "options": {<the options it reads>}, "seconds": 0.4,
                                  <what its compute function returned>}, ...}}

Built-in sections: ``affine`` (options: thresholds) n_layers, n_features, fraction_gamma_below,
overall, layers (per layer: statistics of γ, β, initial γ; per-channel γ, β, initial γ, β);
``disabled`` (thresholds, dead_share) test (the baseline evaluation), n_features, n_dead,
fraction_dead, n_relu_fed_features, n_dead_relu_fed, fraction_dead_relu_fed, dead_relation,
layers (per layer: feeds_relu, n_dead, fraction_dead, dead_channels, per-channel off_share);
``ablation`` (draws, seed; needs disabled) the ablation with by_destination. A section is
recomputed when its evaluator's version or options differ, or a section it needs is recomputed;
the rest are kept, and so are sections of evaluators not registered now. Older files (format 1
and 2, one flat object) are migrated when read (:func:`~bnonly.analysis.runs.migrate`).

Adding an analysis, from your own code::

    import torch
    from bnonly.analysis import Column, affine_values, evaluator

    @evaluator("negative_gamma", version=1,
               columns=[Column("fraction_negative_gamma", lambda s: s["fraction"], "γ < 0")])
    def negative_gamma(ctx, options):
        \"\"\"Share of BN features whose γ is negative.\"\"\"
        gamma = torch.cat([affine_values(m)[0] for _, m in ctx.layers])
        return {"fraction": (gamma < 0).double().mean().item()}

Then ``bnonly analyze`` adds the section to every run (the others are kept), and ``bnonly report``
shows the column in its "What BatchNorm learned" table and in runs.csv/groups.csv.
"""

from .builtin import ablation  # importing builtin registers the built-in evaluators
from .cli import add_subcommand, parse_thresholds, summary_line
from .errors import AnalysisError
from .evaluators import (DEFAULT_DEAD_SHARE, DEFAULT_DRAWS, DEFAULT_THRESHOLDS, EVALUATORS, REPORT_TABLES,
                         AnalysisContext, Column, Evaluator, analysis_options, analyze_model, column_values,
                         evaluator, stale_sections)
from .features import (DESTINATION_LABELS, OffCounter, affine_values, bn_layers, is_normalizer, is_relu_like,
                       random_masks, relu_fed_batchnorms, zeroed_features)
from .figures import channels, plot_run, pyplot
from .runs import ANALYSIS_FILE, FORMAT_VERSION, LoadedRun, analyze_run, finished_runs, load_run, migrate, read_analysis
from .stats import describe, fraction_below, threshold_key

__all__ = [
    "ANALYSIS_FILE", "AnalysisContext", "AnalysisError", "Column", "DEFAULT_DEAD_SHARE", "DEFAULT_DRAWS",
    "DEFAULT_THRESHOLDS", "DESTINATION_LABELS", "EVALUATORS", "Evaluator", "FORMAT_VERSION", "LoadedRun", "OffCounter",
    "REPORT_TABLES", "ablation", "add_subcommand", "affine_values", "analysis_options", "analyze_model", "analyze_run",
    "bn_layers", "channels", "column_values", "describe", "evaluator", "finished_runs", "fraction_below",
    "is_normalizer", "is_relu_like", "load_run", "migrate", "parse_thresholds", "plot_run", "pyplot", "random_masks",
    "read_analysis", "relu_fed_batchnorms", "stale_sections", "summary_line", "threshold_key", "zeroed_features",
]
