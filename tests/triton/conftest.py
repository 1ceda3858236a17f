"""The Triton kernels, run on CPU tensors by the Triton interpreter. A separate pytest run:

    TRITON_INTERPRET=1 NANOINSTRUCT_KERNELS=triton .venv/bin/python -m pytest tests/triton

triton.jit reads TRITON_INTERPRET when the kernels are defined, i.e. when `kernels` is
imported; without it these tests would not test the kernels, so the run stops here instead.
"""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError("tests/triton needs TRITON_INTERPRET=1 in the environment (set before "
                            "Python starts): TRITON_INTERPRET=1 NANOINSTRUCT_KERNELS=triton "
                            "python -m pytest tests/triton. The normal run is "
                            "python -m pytest tests --ignore=tests/triton")

import kernels  # noqa: E402

if not kernels.INTERPRET:
    raise pytest.UsageError("`kernels` was imported before TRITON_INTERPRET=1 was set")


@pytest.fixture(autouse=True)
def _triton_only(monkeypatch):
    """Every public kernels.* call in this directory must dispatch to Triton."""
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "triton")
    use_triton = kernels._use_triton

    def must_use_triton(x):
        assert use_triton(x), "the dispatch chose the torch reference"
        return True
    monkeypatch.setattr(kernels, "_use_triton", must_use_triton)
