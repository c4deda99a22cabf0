"""The documentation site's build helpers: a griffe extension and an mkdocs hook (mkdocs.yml
loads both from this file).

The griffe extension (for mkdocstrings' API reference): bnonly's docstrings are prose with reST
inline roles (:func:`train`, :class:`Selection`); in Markdown those would show the role's name.
This turns each role into a plain code span. It also documents the fields of ``TrainConfig``
from their own help text (the text ``bnonly train --help`` prints, with the allowed values in
brackets), and shows each field's default instead of the ``_f(...)`` call that declares it.

The mkdocs hook: a table cell's ``|`` must be written ``\\|`` even inside backticks (GitHub and
``term_table_markdown()`` do so), but Python-Markdown keeps the backslash inside a code span;
``on_page_content`` drops it from code spans in table cells.

Not part of the package: it runs only inside ``mkdocs build``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

TABLE_CELL = re.compile(r"<td>.*?</td>", re.S)
ESCAPED_PIPE_IN_CODE = re.compile(r"(<code>[^<]*?)\\\|")
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`~?([^`]+)`")


def plain_roles(text: str) -> str:
    """``:func:`x``` -> ```x```: every reST role of ``text`` as a Markdown code span."""
    return ROLE.sub(r"`\1`", text)


def _fields_by_import() -> dict[str, tuple[str, str]] | None:
    """Field name -> (help, repr of the default), read from the class itself; None without torch."""
    try:
        import dataclasses

        from bnonly.config import TrainConfig
    except ImportError:
        return None
    out = {}
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = (f.metadata.get("help", ""), repr(default))
    return out


def _fields_by_reading(cls: griffe.Class) -> dict[str, tuple[str, str]]:
    """The same from the source alone, for the fields whose help is a plain string literal."""
    out = {}
    for name, member in cls.members.items():
        value = getattr(member, "value", None)
        if value is None or not str(value).startswith("_f("):
            continue
        try:
            call = ast.parse(str(value), mode="eval").body
            out[name] = (ast.literal_eval(call.args[1]), ast.unparse(call.args[0]))
        except (ValueError, SyntaxError, IndexError, AttributeError):
            continue
    return out


class BnonlyDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "bnonly":
            return
        cls = pkg["config.TrainConfig"]
        fields = _fields_by_import() or _fields_by_reading(cls)
        for name, (help_text, default) in fields.items():
            member = cls.members.get(name)
            if member is None or member.is_alias:
                continue
            member.docstring = griffe.Docstring(plain_roles(help_text), parent=member)
            member.value = default


def on_page_content(html: str, **kwargs: Any) -> str:
    """mkdocs hook: ``<td>...<code>a\\|b</code>...</td>`` -> ``<code>a|b</code>``."""
    def unescape(cell: re.Match) -> str:
        text = cell.group(0)
        while (fixed := ESCAPED_PIPE_IN_CODE.sub(r"\1|", text)) != text:
            text = fixed
        return text

    return TABLE_CELL.sub(unescape, html)
