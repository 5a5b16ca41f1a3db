import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless C MuJoCo rendering; must precede `import mujoco`

import sys  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, saying why, where torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none here (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vec_env_factory():
    """Builds EgoRoomVecEnvs, caching one per configuration (Warp set-up is the slow part)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    cache = {}

    def make(**kw):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
        if key not in cache:
            cache[key] = EgoRoomVecEnv(**kw)
        return cache[key]

    return make


# ------------------------------------------------------------------------------ host traffic
# What makes a GPU program wait for the host or copy data to it, counted on any device (on a CPU
# machine the same calls are made; they only cost nothing there):
#   - reading values on the host: ``.cpu()``, ``.numpy()``, ``.tolist()``, and every scalar read
#     (``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, a tensor used as a Python index), which
#     torch runs as ``_local_scalar_dense``;
#   - ops whose output size depends on the data (``nonzero``, boolean-mask indexing, ...): torch
#     must read that size on the host;
#   - tensors made from host data (``torch.tensor``, ``torch.as_tensor`` of non-tensors,
#     ``torch.from_numpy``, ``Tensor.new_tensor``) and indexing with numpy arrays or lists
#     (``host_index``): on a GPU, a host-to-device copy.
HOST_READ_METHODS = ("cpu", "numpy", "tolist")
DATA_DEPENDENT_OPS = (
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
)


class _DataDependentOps(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in DATA_DEPENDENT_OPS:
            self.counts[name] += 1
        elif name in ("index", "index_put", "index_put_") and len(args) > 1:
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None):
                self.counts["boolean_mask_index"] += 1
        elif name == "repeat_interleave" and "output_size" not in (kwargs or {}):
            self.counts["repeat_interleave"] += 1
        return func(*args, **(kwargs or {}))


def _host_index(tensor, index, *value) -> bool:
    """Whether ``tensor[index]`` indexes with a numpy array or a list (copied to the device first)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (np.ndarray, list)) for i in parts)


@contextmanager
def count_host_traffic() -> Iterator[Counter]:
    """Count, while active, every host read, data-dependent op and tensor made from host data
    (see above), by name; yields the ``Counter``."""
    counts: Counter = Counter()

    def counting(name, fn, when=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if when(*args, **kwargs):
                counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    patches = [mock.patch.object(torch.Tensor, m, counting(m, getattr(torch.Tensor, m))) for m in HOST_READ_METHODS]
    for m in ("__getitem__", "__setitem__"):
        patches.append(mock.patch.object(torch.Tensor, m, counting("host_index", getattr(torch.Tensor, m), _host_index)))
    patches += [mock.patch.object(torch.Tensor, "new_tensor", counting("new_tensor", torch.Tensor.new_tensor))]
    for name in ("tensor", "from_numpy"):
        patches.append(mock.patch.object(torch, name, counting(name, getattr(torch, name))))
    patches.append(
        mock.patch.object(
            torch, "as_tensor", counting("as_tensor", torch.as_tensor, lambda data, *a, **k: not isinstance(data, torch.Tensor))
        )
    )
    for p in patches:
        p.start()
    try:
        with _DataDependentOps(counts):
            yield counts
    finally:
        for p in reversed(patches):
            p.stop()


def count_python_lines(fn: Callable[[], object]) -> int:
    """Python lines executed by ``fn()`` (all modules). Equal counts at two batch sizes mean no
    Python loop runs over the worlds."""
    n = 0

    def tracer(frame, event, arg):
        nonlocal n
        if event == "line":
            n += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return n


@pytest.fixture
def host_traffic():
    """``count_host_traffic``: a context manager counting host reads and host-made tensors."""
    return count_host_traffic


@pytest.fixture
def python_lines():
    """``count_python_lines``: Python lines executed by a call."""
    return count_python_lines
