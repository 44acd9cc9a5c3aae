"""Call awaitables from plain synchronous functions running inside asyncio.

``await async_def(fn, *args, **kwargs)`` runs the ordinary function ``fn`` on its
own fiber stack; anywhere below it, ``awaitlet(awaitable)`` suspends that stack,
lets the awaiting task ``await`` the awaitable, and returns its result (or
raises its exception) at the call site.  A drop-in replacement for the
``awaitlet`` package that needs no ``greenlet``.
"""

from __future__ import annotations

from ._awaitlet import NoAwaitletContext, NoAwaitOccurred, __version__, async_def, awaitlet

__all__ = [
    "NoAwaitOccurred",
    "NoAwaitletContext",
    "__version__",
    "async_def",
    "awaitlet",
    "install_greenlet_shim",
]


def install_greenlet_shim() -> None:
    """Make ``import greenlet`` give :mod:`awaitlet.greenlet` when greenlet is not installed.

    An installed awaitlet already does this at interpreter start (unless the environment
    variable ``AWAITLET_GREENLET_SHIM`` is ``0``); this is for code that turned that off or
    wants to be explicit.  If the real greenlet is installed, it is still the one imported.
    Call it before the first ``import greenlet`` (SQLAlchemy imports it when its asyncio
    extension is imported).
    """
    import _awaitlet_greenlet_shim

    _awaitlet_greenlet_shim.install()


async def _async_def_signature(fn, /, *args, assert_await_occurs=False, **kwargs):  # type: ignore[no-untyped-def]
    """Run the sync callable ``fn(*args, **kwargs)`` so that it can call :func:`awaitlet`.

    Returns a coroutine; awaiting it runs ``fn`` on its own stack and gives its result.
    With ``assert_await_occurs=True``, :class:`NoAwaitOccurred` is raised if ``fn``
    returned without calling :func:`awaitlet`.
    """


def _describe_async_def() -> None:
    # async_def is a native callable; these attributes make inspect and asyncio see the
    # coroutine function it is (inspect.iscoroutinefunction, inspect.signature, help()).
    for attribute in ("__code__", "__defaults__", "__kwdefaults__", "__annotations__", "__doc__"):
        setattr(async_def, attribute, getattr(_async_def_signature, attribute))
    async_def.__name__ = async_def.__qualname__ = "async_def"
    async_def.__module__ = __name__
    import inspect

    if hasattr(inspect, "markcoroutinefunction"):
        inspect.markcoroutinefunction(async_def)


_describe_async_def()
del _describe_async_def


def _warn_if_original_installed() -> None:
    # One stat, of a file that only the original awaitlet distribution installs: if it is in
    # this package, both distributions wrote into it (see _awaitlet_greenlet_shim).
    from os import path

    package = path.dirname(__file__)
    if path.exists(path.join(package, "util", "typing.py")):
        import _awaitlet_greenlet_shim

        _awaitlet_greenlet_shim.warn_original_awaitlet(path.dirname(package))


_warn_if_original_installed()
del _warn_if_original_installed
