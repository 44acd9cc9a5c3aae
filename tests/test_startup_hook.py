"""The .pth hook that makes ``import greenlet`` give the facade costs every Python process of
the environment nothing but its own small module."""

import ast
import os
import subprocess
import sys

import pytest


def modules_at_startup(**environment):
    env = {**os.environ, **environment}
    output = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return set(ast.literal_eval(output))


def test_hook_imports_only_its_own_module_at_startup():
    with_hook = modules_at_startup()
    if "_awaitlet_greenlet_shim" not in with_hook:
        pytest.skip("the .pth hook is not installed in this environment")
    without_hook = modules_at_startup(AWAITLET_GREENLET_SHIM="0")
    assert with_hook - without_hook == {"_awaitlet_greenlet_shim"}
    assert without_hook <= with_hook


@pytest.mark.parametrize("value", ["0", "off", " False "])
def test_hook_turned_off_imports_nothing_and_installs_nothing(value):
    modules = modules_at_startup(AWAITLET_GREENLET_SHIM=value)
    assert "_awaitlet_greenlet_shim" not in modules
