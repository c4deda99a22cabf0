"""Optional packages, imported where they are used and refused in one line naming the extra.

The core install (torch, numpy, Pillow, tqdm, PyYAML) trains, analyses and benchmarks; tables,
figures, Slurm and TensorBoard need more. A command that reaches one of those without the package
installed stops with :class:`~bnonly.errors.MissingExtra` (one line on the command line, exit 2),
never an ImportError traceback from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtra

#: Which extra of ``pip install 'bnonly[EXTRA]'`` brings each optional top-level package.
EXTRA_OF = {"pandas": "report", "matplotlib": "report", "submitit": "slurm", "tensorboard": "tensorboard"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. "pandas", "matplotlib.pyplot") for ``purpose`` (e.g. "bnonly report"),
    or raise MissingExtra naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = (getattr(e, "name", None) or top).split(".")[0]
        extra = EXTRA_OF.get(missing, EXTRA_OF.get(top))
        raise MissingExtra(f"{purpose} needs the {missing} package, which bnonly's core install leaves out: "
                           f"pip install 'bnonly[{extra}]'") from None
