"""bnonly's version, in one place: ``bnonly.__version__``, ``bnonly --version`` and the wheel's
metadata (pyproject.toml reads it with setuptools' ``attr:``) all come from here."""

__version__ = "0.3.0"
