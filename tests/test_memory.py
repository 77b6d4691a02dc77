"""The warm-allocator settings (lensdesign.memory): a freed large CPU buffer is reused without page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocate, touch and free a 256 MB tensor twice; report the minor page faults of the second round.
PROBE = """
import json, resource, sys
from lensdesign import memory
done = memory.configure()
import torch
def touch():
    x = torch.empty(64 * 2**20, dtype=torch.float32)
    x.fill_(1.0)
    del x
touch()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
import os
print(json.dumps({"faults": r1 - r0, "done": done, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def _probe(warm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_MAX_")}
    env["LENSDESIGN_WARM_ALLOCATOR"] = warm
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_freed_large_buffer_is_reused_warm() -> None:
    cold, warm = _probe("0"), _probe("1")
    pages = 256 * 2**20 // 4096
    assert cold["done"] == {"glibc_heap": False, "thp": False} and cold["thp"] is None
    assert cold["faults"] > pages // 2  # the system allocator maps the block afresh: one fault per 4 KiB page
    assert warm["done"] == {"glibc_heap": True, "thp": True} and warm["thp"] == "1"
    assert warm["faults"] < pages // 100  # reused from the heap, already mapped


def test_cli_sets_thp_before_torch() -> None:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    code = "import os, sys, lensdesign.cli; print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert out.stdout.split() == ["1", "False"]
