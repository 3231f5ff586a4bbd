"""Trained test fixtures kept on disk, keyed by everything that makes them (issue 31, item 8).

A judge the tests train for a minute is the same model whenever its training code, its inputs,
torch and the thread count are the same: `cached` keeps it in `.cache/test-fixtures`
(`SDLAB_TEST_FIXTURES` elsewhere: each mutant's copy reads the clone's) under the sha256 of
those, so `make mutants` reuses what `make test` trained, while a mutant that breaks the
training code changes the key and trains afresh. A key that misses a function the training
calls fails loudly, never quietly: the mutant of that function would then survive its test.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".cache" / "test-fixtures"


def fixture_key(code: Sequence[Callable | type | ModuleType], arrays: Sequence[np.ndarray], data: object) -> str:
    """sha256 of the sources of `code`, the bytes of `arrays`, `data` as JSON, torch's version and threads."""
    digest = hashlib.sha256(f"{torch.__version__}|{torch.get_num_threads()}".encode())
    for item in code:
        digest.update(inspect.getsource(item).encode())
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(data, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cached(name: str, key: str, build: Callable[[], object]) -> object:
    """What `build` made for this `key` before (a module, arrays, rows), or `build()` saved for the next run."""
    folder = Path(os.environ.get("SDLAB_TEST_FIXTURES", DEFAULT_DIR))
    path = folder / f"{name}-{key[:24]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    made = build()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".pt", delete=False) as tmp:
        torch.save(made, tmp)  # pickled whole: a module's classes come from whichever sdlab loads it
    os.replace(tmp.name, path)
    return made
