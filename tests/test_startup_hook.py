"""The .pth hook that makes ``import greenlet`` give the facade costs every Python process of
the environment nothing but its own small module."""

import ast
import os
import subprocess
import sys

import pytest


def startup(**environment):
    """The modules a fresh interpreter has imported, and whether the hook's finder is on
    sys.meta_path."""
    env = {**os.environ, **environment}
    output = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; print(sorted(sys.modules)); "
            "print(any(getattr(f, '__awaitlet_greenlet_hook__', False) for f in sys.meta_path))",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.splitlines()
    return set(ast.literal_eval(output[0])), output[1] == "True"


def test_hook_imports_nothing_at_startup():
    modules, hooked = startup()
    if not hooked:
        pytest.skip("the .pth hook is not installed in this environment")
    unhooked_modules, unhooked = startup(AWAITLET_GREENLET_SHIM="0")
    assert not unhooked
    assert modules == unhooked_modules


@pytest.mark.parametrize("value", ["0", "off", " False "])
def test_hook_can_be_turned_off(value):
    if not startup()[1]:
        pytest.skip("the .pth hook is not installed in this environment")
    assert startup(AWAITLET_GREENLET_SHIM=value)[1] is False


def test_greenlet_through_the_hook_is_the_facade():
    if not startup()[1]:
        pytest.skip("the .pth hook is not installed in this environment")
    origin, facade = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; print(importlib.util.find_spec('greenlet').origin); "
            "import greenlet; print(getattr(greenlet, '__awaitlet_facade__', False))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    if origin != "awaitlet.greenlet":
        pytest.skip("the greenlet package is installed, and it is what `import greenlet` gives")
    assert facade == "True"
