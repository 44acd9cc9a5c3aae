"""Sync faces for async objects, for code running in a task with a portal.

Everything here calls :func:`awaitlet.portal.await_`, so it works where that does: in sync
code below a task that has a portal (:func:`awaitlet.portal.ensure_portal` and friends).
These are the helpers of greenback's ``_util`` module, with the same behaviour.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

from .portal import await_, with_portal_run_sync

__all__ = ["async_context", "async_generator", "async_iter", "autoawait", "decorate_as_sync"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_AsyncF = TypeVar("_AsyncF", bound=Callable[..., Awaitable[Any]])


def autoawait(fn: Callable[..., Awaitable[_T]]) -> Callable[..., _T]:
    """Make the async function ``fn`` a sync one: calling it awaits it with ``await_()``.

    For places that cannot ``await``: magic methods, property setters, callbacks.
    """

    @functools.wraps(fn)
    def call_and_wait(*args: Any, **kwargs: Any) -> _T:
        return await_(fn(*args, **kwargs))

    return call_and_wait


@overload
def decorate_as_sync(decorator: Callable[[_F], _F]) -> Callable[[_AsyncF], _AsyncF]: ...
@overload
def decorate_as_sync(
    decorator: Callable[..., Any],
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]: ...
def decorate_as_sync(decorator: Callable[..., Any]) -> Callable[..., Any]:
    """Apply a decorator written for sync functions to an async function.

    ``@decorate_as_sync(functools.lru_cache())`` on an ``async def`` caches its results,
    not its coroutine objects: the decorator wraps a sync function that runs the async one
    with :func:`~awaitlet.portal.await_`, and the result is an async function that calls
    that through :func:`~awaitlet.portal.with_portal_run_sync`.
    """

    def decorate(async_fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @decorator
        @functools.wraps(async_fn)
        def run_to_completion(*args: Any, **kwargs: Any) -> Any:
            return await_(async_fn(*args, **kwargs))

        @functools.wraps(run_to_completion)
        async def decorated(*args: Any, **kwargs: Any) -> Any:
            return await with_portal_run_sync(run_to_completion, *args, **kwargs)

        return decorated

    return decorate


class async_context(Generic[_T]):
    """An async context manager for a sync ``with`` statement."""

    __slots__ = ("_manager", "_exit")

    def __init__(self, manager: AbstractAsyncContextManager[_T]) -> None:
        """Wrap ``manager``; nothing is entered until ``__enter__``."""
        self._manager = manager

    def __enter__(self) -> _T:
        """``await_(manager.__aenter__())``, looked up on the type as ``async with`` does."""
        manager_type = type(self._manager)
        name = manager_type.__name__
        if sys.version_info >= (3, 11):
            if not hasattr(manager_type, "__aenter__"):
                raise TypeError(
                    f"{name!r} object does not support the asynchronous context manager protocol"
                )
            if not hasattr(manager_type, "__aexit__"):
                raise TypeError(
                    f"{name!r} object does not support the asynchronous context manager "
                    "protocol (missed __aexit__ method)"
                )
        elif not hasattr(manager_type, "__aexit__"):
            raise AttributeError(f"type object {name!r} has no attribute '__aexit__'")
        self._exit = manager_type.__aexit__
        entered: _T = await_(manager_type.__aenter__(self._manager))
        return entered

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """``await_(manager.__aexit__(...))``: true suppresses the exception."""
        suppress: bool | None = await_(self._exit(self._manager, exc_type, exc, traceback))
        return suppress


class async_iter(Generic[_T]):
    """An async iterator (or iterable) for sync iteration: ``for``, ``list()``, ``yield from``.

    Wrapping an async generator gives an :class:`async_generator`, which also has
    ``send``, ``throw`` and ``close``.
    """

    __slots__ = ("_iterator",)

    def __init__(self, iterable: AsyncIterable[_T]) -> None:
        """Take ``iterable.__aiter__()``; TypeError if it has none or that has no ``__anext__``."""
        if not hasattr(type(iterable), "__aiter__"):
            raise TypeError(
                "'async_iter' requires an object with __aiter__ method, got "
                + type(iterable).__name__
            )
        self._iterator: AsyncIterator[_T] = type(iterable).__aiter__(iterable)
        if not hasattr(type(self._iterator), "__anext__"):
            raise TypeError(
                "'async_iter' received an object from __aiter__ that does not implement "
                "__anext__: " + type(self._iterator).__name__
            )
        if all(hasattr(self._iterator, name) for name in ("asend", "athrow", "aclose")):
            # Its generator face: send, throw and close as well.
            object.__setattr__(self, "__class__", async_generator)

    def __iter__(self) -> async_iter[_T]:
        """This object."""
        return self

    def __next__(self) -> _T:
        """``await_(iterator.__anext__())``; its StopAsyncIteration becomes StopIteration."""
        try:
            item: _T = await_(type(self._iterator).__anext__(self._iterator))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None
        return item


class async_generator(async_iter[_T]):
    """An async generator for sync use: what :class:`async_iter` gives for one."""

    __slots__ = ()

    def _generator(self) -> AsyncGenerator[_T, Any]:
        return cast(AsyncGenerator[_T, Any], self._iterator)

    def send(self, value: Any) -> _T:
        """``await_(agen.asend(value))``; StopAsyncIteration becomes StopIteration."""
        try:
            item: _T = await_(self._generator().asend(value))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None
        return item

    def throw(self, *exception: Any) -> _T:
        """``await_(agen.athrow(...))``; StopAsyncIteration becomes StopIteration."""
        try:
            item: _T = await_(self._generator().athrow(*exception))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None
        return item

    def close(self) -> None:
        """``await_(agen.aclose())``."""
        await_(self._generator().aclose())
