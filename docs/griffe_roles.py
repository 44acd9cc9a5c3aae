"""Griffe extension for the API reference: the docstrings use Sphinx roles
(``:func:`awaitlet```, ``:class:`NoAwaitOccurred```, ``:mod:`awaitlet.greenlet```), which
Markdown does not know; render each as inline code."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


class SphinxRolesAsCode(griffe.Extension):
    """Turns ``:role:`target``` into ``target`` in code font, in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"``\1``", obj.docstring.value)
