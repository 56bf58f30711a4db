"""Griffe extension for the API reference: a class whose docstring is built at import time
(``__doc__ = "..." + shared_text``) has none that static analysis can read; take the runtime one."""

from __future__ import annotations

import inspect

import griffe


class RuntimeDocstrings(griffe.Extension):
    def on_class(self, *, cls: griffe.Class, loader: griffe.GriffeLoader, **kwargs) -> None:
        if cls.docstring is not None or "__doc__" not in cls.members:
            return
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        doc = runtime.__dict__.get("__doc__")
        if isinstance(doc, str) and doc.strip():
            cls.docstring = griffe.Docstring(inspect.cleandoc(doc), parent=cls, parser=loader.docstring_parser,
                                             parser_options=loader.docstring_options)
