import asyncio

import awaitlet
import pytest
from awaitlet import NoAwaitletContext, NoAwaitOccurred, __version__, async_def
from awaitlet import awaitlet as awaitlet_function


def test_public_names_are_importable():
    assert callable(async_def)
    assert callable(awaitlet_function)
    assert isinstance(__version__, str)
    assert __version__


def test_exceptions_are_plain_exception_subclasses():
    assert issubclass(NoAwaitletContext, Exception)
    assert issubclass(NoAwaitOccurred, Exception)
    assert not issubclass(NoAwaitletContext, NoAwaitOccurred)
    assert not issubclass(NoAwaitOccurred, NoAwaitletContext)


def test_exceptions_can_be_raised_and_caught_by_user_code():
    with pytest.raises(NoAwaitletContext, match="custom"):
        raise NoAwaitletContext("custom")
    with pytest.raises(NoAwaitOccurred, match="custom"):
        raise NoAwaitOccurred("custom")


def test_module_attributes_are_the_same_objects_as_imported_names():
    assert awaitlet.async_def is async_def
    assert awaitlet.awaitlet is awaitlet_function
    assert awaitlet.NoAwaitletContext is NoAwaitletContext
    assert awaitlet.NoAwaitOccurred is NoAwaitOccurred


def test_round_trip_through_async_def_and_awaitlet():
    async def double(value):
        await asyncio.sleep(0)
        return value * 2

    def sync_sum(*values):
        return sum(awaitlet_function(double(value)) for value in values)

    async def main():
        return await async_def(sync_sum, 1, 2, 3)

    assert asyncio.run(main()) == 12


def test_awaitlet_base_offers_what_the_original_module_did():
    import awaitlet.base

    assert awaitlet.base.async_def is awaitlet.async_def
    assert awaitlet.base.awaitlet is awaitlet.awaitlet
    assert awaitlet.base.NoAwaitletContext is awaitlet.NoAwaitletContext
    assert awaitlet.base.NoAwaitOccurred is awaitlet.NoAwaitOccurred
    assert awaitlet.base.is_exit_exception(KeyboardInterrupt())
    assert awaitlet.base.is_exit_exception(asyncio.CancelledError())
    assert awaitlet.base.is_exit_exception(asyncio.TimeoutError())
    assert not awaitlet.base.is_exit_exception(ValueError())


def test_in_async_def_tells_where_awaitlet_would_suspend():
    from awaitlet.util import in_async_def

    async def main():
        def inner():
            assert in_async_def()
            awaitlet_function(asyncio.sleep(0))
            return in_async_def()

        return in_async_def(), await async_def(inner)

    assert in_async_def() is False
    assert asyncio.run(main()) == (False, True)


def test_in_async_def_with_another_greenlet_module_in_use(monkeypatch):
    """With a greenlet package other than the facade in use (the real one, with SQLAlchemy),
    its running greenlet decides; the module is told apart from the facade once, not at each
    call (a failed lookup on a module makes an AttributeError, about a microsecond)."""
    import sys
    import types

    from awaitlet.util import in_async_def

    lookups: list[str] = []

    class Provider:
        __sqlalchemy_greenlet_provider__ = True

    class Plain:
        pass

    class GreenletModule(types.ModuleType):
        def __getattr__(self, name):
            lookups.append(name)
            raise AttributeError(name)

    module = GreenletModule("greenlet")
    running = [Plain()]
    module.getcurrent = lambda: running[0]
    monkeypatch.setitem(sys.modules, "greenlet", module)
    assert [in_async_def() for _ in range(100)] == [False] * 100
    running[0] = Provider()
    assert in_async_def() is True
    assert lookups == ["__awaitlet_facade__"]
