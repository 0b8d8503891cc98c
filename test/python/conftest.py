"""Shared fixtures of the comparison tests: where the built tools and the
examples are, and a helper that runs a tool and fails the test with its output.

The tests run under ctest (test/CMakeLists.txt passes G3MOE_BUILD_DIR and
G3MOE_SOURCE_DIR); run them by hand with
    $G3MOE_VENV/bin/python -m pytest test/python
after a build in build/.
"""
import os
import subprocess
from pathlib import Path

import pytest

SOURCE_DIR = Path(os.environ.get("G3MOE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD_DIR = Path(os.environ.get("G3MOE_BUILD_DIR", SOURCE_DIR / "build"))
BIN = BUILD_DIR / "bin"
EXAMPLES = SOURCE_DIR / "examples"

# g3moe-run's --device defaults to auto (the GPU where there is one); these
# comparisons hold the CPU reference backend to tight tolerances, so they pin
# it unless the caller chose a device.
os.environ.setdefault("G3MOE_DEVICE", "cpu")


def run_tool(*args, check=True, **kwargs):
    """Runs a g3moe tool; on an unexpected exit code the test fails with its output."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                    f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def g3moe_compile():
    return lambda *args, **kw: run_tool(BIN / "g3moe-compile", *args, **kw)


@pytest.fixture
def g3moe_run():
    return lambda *args, **kw: run_tool(BIN / "g3moe-run", *args, **kw)
