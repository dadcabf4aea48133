"""dashlib.allocator: glibc's malloc stops handing PyTorch fresh (page-faulting) memory
for every activation, and the opt-outs are respected."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# Forwards of a small UNet (each allocates and frees its activations): the minor page
# faults of three forwards after a warm-up one.
PROBE = """
import json, resource
from dashlib.allocator import tune_allocator
applied = tune_allocator()
import torch
from dashlib.presets import get_preset
from dashlib.unet import build_unet
torch.set_num_threads(1)
cfg = get_preset("digits").student
model = build_unet(cfg, 0).eval()
x, t, y = torch.randn(256, 1, 8, 8), torch.zeros(256, dtype=torch.long), torch.zeros(256, dtype=torch.long)
with torch.no_grad():
    model(x, t, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x, t, y)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DASH_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_allocator_stops_the_page_faults_of_repeated_forwards():
    tuned, system = _probe(), _probe(DASH_MALLOC="system")
    assert tuned["applied"] and not system["applied"]
    # glibc's defaults fault the activations in afresh every forward; tuned, memory is reused
    assert system["faults"] > 1_000, system
    assert tuned["faults"] < system["faults"] / 4, (tuned, system)


def test_the_users_own_malloc_settings_win():
    assert not _probe(MALLOC_MMAP_MAX_="65536")["applied"]
    assert _probe(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))["applied"]  # ours already


def test_children_inherit_the_settings(monkeypatch):
    import dashlib.allocator as allocator

    for k in allocator.ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.tune_allocator()
    assert all(os.environ[k] == v for k, v in allocator.ENV.items())
    assert allocator.tune_allocator()  # once per process: the second call is a no-op


HEAP_PROBE = """
import json, os
import torch
from dashlib import allocator

if os.environ.get("TUNE_HERE"):
    allocator.tune_allocator()

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def churn():  # a 64 MB buffer (a 16,000 x 1,024 distance block), written and freed
    x = torch.ones(16_000_000)
    del x

churn()
kept = resident_mb()  # the tuned heap keeps the freed block
with allocator.system_heap():
    churn()
given_back = resident_mb()  # glibc's defaults inside, and a trim on the way out
churn()
print(json.dumps({"kept": kept, "given_back": given_back, "kept_again": resident_mb()}))
"""


INHERITED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}  # a worker's start


@pytest.mark.parametrize("env", [{"TUNE_HERE": "1"}, INHERITED])
def test_the_metrics_large_buffers_are_given_back_after_system_heap(env):
    """The tuned heap keeps what it frees: precision/recall's distance blocks fragmented it
    (2.7 GB resident at a 20,000-image reference, 1.2 GB with glibc's defaults). Leaving
    `system_heap` gives the freed memory back, and the tuning holds again after it (a freed
    block is kept), in the process that tuned itself and in a worker that inherited it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DASH_MALLOC"}
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert mb["kept"] - mb["given_back"] > 48 and mb["kept_again"] - mb["given_back"] > 48, mb
