"""What ``help()``, ``inspect`` and type checkers are told about the public API: signatures,
docstrings, the stub and ``py.typed`` (mypy, pyright and stubtest run in ``nox -s typecheck``)."""

import asyncio
import inspect
import io
import pydoc
import runpy
import typing
from collections.abc import Callable
from pathlib import Path

import awaitlet
import awaitlet.base
import awaitlet.greenlet
import pytest
from awaitlet import async_def
from awaitlet import awaitlet as awaitlet_function

ASYNC_DEF_SIGNATURE = "(fn, /, *args, assert_await_occurs=False, **kwargs)"


def help_text(obj: object) -> str:
    """What ``help(obj)`` prints."""
    output = io.StringIO()
    pydoc.Helper(output=output).help(obj)
    return output.getvalue()


def test_async_def_signature():
    signature = inspect.signature(async_def)
    assert str(signature) == ASYNC_DEF_SIGNATURE
    kinds = [(name, parameter.kind) for name, parameter in signature.parameters.items()]
    assert kinds == [
        ("fn", inspect.Parameter.POSITIONAL_ONLY),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("assert_await_occurs", inspect.Parameter.KEYWORD_ONLY),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    assert signature.parameters["assert_await_occurs"].default is False
    assert async_def.__text_signature__ == ASYNC_DEF_SIGNATURE


def test_async_def_is_seen_as_a_coroutine_function():
    assert inspect.iscoroutinefunction(async_def)
    assert inspect.isroutine(async_def)
    assert async_def.__name__ == async_def.__qualname__ == "async_def"
    assert async_def.__module__ == "awaitlet"


def test_async_def_annotations_are_objects():
    hints = typing.get_type_hints(async_def)
    assert hints["assert_await_occurs"] is bool
    assert hints["args"] is typing.Any
    assert typing.get_origin(hints["fn"]) is Callable


def test_async_def_stays_unbound_as_a_class_attribute():
    class Holder:
        run = async_def

    assert Holder.run is async_def
    assert Holder().run is async_def

    def sync_code(value):
        return value + 1

    assert asyncio.run(Holder().run(sync_code, 1)) == 2


def test_awaitlet_signature():
    assert awaitlet_function.__text_signature__ == "(awaitable)"
    signature = inspect.signature(awaitlet_function)
    assert str(signature) == "(awaitable)"
    (parameter,) = signature.parameters.values()
    assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_help_shows_async_def_signature_and_docstring():
    text = help_text(async_def)
    assert f"async async_def{ASYNC_DEF_SIGNATURE}" in text
    assert "Run the sync callable ``fn(*args, **kwargs)``" in text
    assert "NoAwaitOccurred" in text
    assert "<awaitlet._awaitlet.async_def_function object" not in text


def test_help_shows_awaitlet_signature_and_docstring():
    text = help_text(awaitlet_function)
    assert "awaitlet(awaitable)\n" in text
    assert "Wait for ``awaitable`` from sync code running under ``async_def()``" in text
    assert "NoAwaitletContext" in text
    # The signature lines CPython reads __text_signature__ from are not shown as doc.
    assert "--\n" not in text


def test_help_on_the_package_lists_async_def_as_a_function():
    text = help_text(awaitlet)
    functions = text.split("FUNCTIONS", 1)[1]
    assert f"async_def{ASYNC_DEF_SIGNATURE}" in functions
    assert "awaitlet(awaitable)" in functions
    assert "install_greenlet_shim()" in functions


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (awaitlet.install_greenlet_shim, "() -> None"),
        (awaitlet.base.is_exit_exception, "(e: BaseException) -> bool"),
        (awaitlet.greenlet.getcurrent, "()"),
        (awaitlet.greenlet.gettrace, "()"),
        (awaitlet.greenlet.settrace, "(callback)"),
        (awaitlet.greenlet.greenlet, "(run=None, parent=None)"),
        (awaitlet.greenlet.greenlet.switch, "(self, /, *args, **kwargs)"),
        (awaitlet.greenlet.greenlet.throw, "(self, /, typ=None, val=None, tb=None)"),
        (awaitlet.greenlet.greenlet.getcurrent, "()"),
    ],
    ids=lambda value: getattr(value, "__qualname__", None),
)
def test_signatures_of_the_other_public_callables(function, expected):
    # Annotations are strings or objects, depending on the module and the Python version.
    assert str(inspect.signature(function)).replace("'", "") == expected


def _documented_names(module):
    return [name for name in module.__all__ if name != "__version__"]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (module, name)
        for module in (awaitlet, awaitlet.base, awaitlet.greenlet)
        for name in _documented_names(module)
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_every_public_name_has_a_docstring(module, name):
    obj = getattr(module, name)
    doc = obj.__doc__
    assert doc, f"{module.__name__}.{name} has no docstring"
    # Its own: not the docstring of its type, nor the "Initialize self" of a base class.
    assert inspect.isclass(obj) or doc != type(obj).__doc__
    assert len(doc.split()) >= 5, f"{module.__name__}.{name}'s docstring says little: {doc!r}"


@pytest.mark.parametrize("module", [awaitlet, awaitlet.base, awaitlet.greenlet])
def test_public_modules_have_docstrings(module):
    assert module.__doc__ and len(module.__doc__.split()) >= 10


@pytest.mark.parametrize(
    "name", ["switch", "throw", "getcurrent", "parent", "dead", "gr_context", "gr_frame"]
)
def test_facade_greenlet_members_have_docstrings(name):
    doc = inspect.getattr_static(awaitlet.greenlet.greenlet, name).__doc__
    assert doc and len(doc.split()) >= 5


def test_the_package_ships_its_stub_and_py_typed():
    package = Path(awaitlet.__file__).parent
    assert (package / "py.typed").is_file()
    stub = (package / "_awaitlet.pyi").read_text(encoding="utf-8")
    for name in awaitlet._awaitlet.__all__:
        assert f'"{name}"' in stub


def test_the_type_checked_usage_example_runs():
    # tests/typing/public_api_usage.py is what mypy and pyright check uses of the API with;
    # it must also be true at run time.
    namespace = runpy.run_path(str(Path(__file__).parent / "typing" / "public_api_usage.py"))
    asyncio.run(namespace["main"]())
    namespace["facade"]()
