"""tcnet.utils.heap: freed image buffers are reused instead of faulted in afresh (glibc)."""

import subprocess
import sys

import pytest

from tcnet.utils import heap

# Decode the same 1024x768 JPEG 20 times in a fresh process (the allocator as it comes, or tuned
# first) and print the minor page faults per decode: what a preprocess worker does per pair.
SCRIPT = """
import io, resource, sys
import numpy as np
from PIL import Image
if sys.argv[1] == "retain":
    from tcnet.utils.heap import retain_freed_memory
    assert retain_freed_memory()
rng = np.random.default_rng(0)
buf = io.BytesIO()
Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(buf, "JPEG")
data = buf.getvalue()
def once():
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)[::2, ::2].copy()
once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    once()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""

glibc_only = pytest.mark.skipif(heap._glibc() is None, reason="the setting is glibc's (Linux)")


def _faults_per_decode(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@glibc_only
def test_retained_heap_stops_the_page_faults_of_each_decode():
    default = _faults_per_decode("default")
    retained = _faults_per_decode("retain")
    # Each decode faults in its ~2.4 MB of buffers afresh by default (hundreds of 4 KiB pages);
    # tuned, the buffers freed by one decode serve the next.
    assert default > 200, f"the default allocator did not fault per decode ({default}): nothing to compare"
    assert retained * 10 < default, (default, retained)


@glibc_only
def test_retain_freed_memory_reports_it_applied():
    # Runs in a child: the setting is process-wide and the test process should keep its own.
    code = "from tcnet.utils.heap import retain_freed_memory; print(retain_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert heap.retain_freed_memory() is False
