"""Small test helpers, importable as ``awaitlet.util.testing``.

These are the helpers that the ``awaitlet`` 0.0.1 test suite imports, so that
suite runs unchanged against this package:

* :func:`eq_` and :func:`ne_` -- equality assertions with a readable message;
* :func:`expect_raises` -- a context manager asserting that its block raises;
* :func:`run_coroutine_function` -- runs a coroutine function to completion on
  an event loop that is created on first use and reused afterwards;
* :data:`async_test` -- ``None`` here; a test suite's ``conftest.py`` sets it to
  a pytest marker (``pytest.mark.async_test``) and wraps marked tests with
  :func:`run_coroutine_function`.

Only the standard library is used, so importing this module never pulls in a
test framework.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import sys
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = [
    "ErrorContainer",
    "async_test",
    "eq_",
    "expect_raises",
    "ne_",
    "run_coroutine_function",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

#: Decorator marking a test as a coroutine to run on the shared loop.  ``None``
#: until a test suite's ``conftest.py`` assigns ``pytest.mark.async_test``.
async_test: Any = None


def eq_(a: object, b: object, msg: str | None = None) -> None:
    """Assert ``a == b``; the failure message shows both values unless ``msg`` is given."""
    assert a == b, msg or f"{a!r} != {b!r}"


def ne_(a: object, b: object, msg: str | None = None) -> None:
    """Assert ``a != b``; the failure message shows both values unless ``msg`` is given."""
    assert a != b, msg or f"{a!r} == {b!r}"


class ErrorContainer(Generic[_E]):
    """What :func:`expect_raises` yields; ``error`` holds the caught exception afterwards."""

    error: _E | None

    def __init__(self) -> None:
        self.error = None


@contextlib.contextmanager
def expect_raises(
    except_cls: type[_E] | tuple[type[_E], ...], check_context: bool = True
) -> Generator[ErrorContainer[_E], None, None]:
    """Assert that the ``with`` block raises ``except_cls`` (or a subclass of it).

    The caught exception is stored on the yielded container's ``error``
    attribute and is not re-raised.  An exception of any other type propagates
    unchanged; a block that raises nothing fails with :class:`AssertionError`.

    With ``check_context`` true, and when no exception was already being handled
    on entry, the caught exception must also carry no implicit ``__context__``
    (one equal to its ``__cause__`` or hidden by ``__suppress_context__`` is
    fine).  That catches code that raises while accidentally still handling
    some other, unrelated exception.
    """
    # An exception being handled on entry legitimately becomes the context.
    handling_on_entry = sys.exc_info()[1] is not None
    container: ErrorContainer[_E] = ErrorContainer()
    try:
        yield container
    except except_cls as err:
        container.error = err
        if check_context and not handling_on_entry:
            context = err.__context__
            assert context is None or context is err.__cause__ or err.__suppress_context__, (
                f"Exception {err!r} was raised with an unexpected __context__: {context!r}"
            )
        return
    raise AssertionError(f"Callable did not raise an exception of type {except_cls!r}")


_loop: asyncio.AbstractEventLoop | None = None


def _close_loop() -> None:
    """Finish async generators and close the shared loop, so no unclosed-loop warning leaks."""
    global _loop
    loop, _loop = _loop, None
    if loop is not None and not loop.is_closed() and not loop.is_running():
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


atexit.register(_close_loop)


def _get_loop() -> asyncio.AbstractEventLoop:
    """Return the shared loop, creating it on first use (or after it was closed)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def run_coroutine_function(
    fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``fn(*args, **kwargs)`` to completion on the module's shared event loop.

    The loop is created on the first call and reused by every later call, so
    state tied to a loop (connection pools, for instance) survives from one
    test to the next.  Must not be called while an event loop is running in
    this thread.
    """
    return _get_loop().run_until_complete(fn(*args, **kwargs))
