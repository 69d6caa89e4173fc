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

# A train step's pattern: build a working set well above the default 256 MiB trim threshold
# (argv[2] blocks of argv[3] MiB), free all of it, again. Prints the minor page faults of the last
# rounds, per round.
TRAIN_LIKE = """
import resource, sys
import numpy as np
from tcnet.utils.heap import retain_freed_memory
if sys.argv[1] == "notrim":
    assert retain_freed_memory(trim_threshold=None)
elif sys.argv[1] == "infer":
    from tcnet.utils.heap import retain_freed_memory_for_inference
    assert retain_freed_memory_for_inference()
elif sys.argv[1] == "retain":
    assert retain_freed_memory()
n, mib = int(sys.argv[2]), int(sys.argv[3])
def once():
    work = [np.ones(mib * 2**18, np.float32) for _ in range(n)]
    del work
once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    once()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3)
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


def _faults_per_round(mode: str, blocks: int, mib: int) -> float:
    out = subprocess.run([sys.executable, "-c", TRAIN_LIKE, mode, str(blocks), str(mib)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@glibc_only
def test_no_trim_keeps_a_freed_working_set_above_the_trim_threshold():
    # 48 blocks of 8 MiB: each below the 32 MiB mmap threshold, so from the heap.
    trimmed, kept = _faults_per_round("retain", 48, 8), _faults_per_round("notrim", 48, 8)
    # 384 MiB freed at the top of the heap is above 256 MiB: trimmed, and faulted in again next
    # round (thousands of faults: 4 KiB pages, or 2 MiB ones where numpy asks for transparent huge
    # pages); with no trimming the next round reuses the same pages.
    assert trimmed > 2_000, f"the 256 MiB trim threshold did not trim ({trimmed} faults/round): nothing to compare"
    assert kept * 100 < trimmed, (trimmed, kept)


@glibc_only
def test_no_trim_keeps_blocks_above_the_mmap_cap():
    # 8 blocks of 48 MiB: above glibc's 32 MiB cap, so mapped and unmapped on every round unless
    # mmap is off (the no-trim form): a U-Net step at batch 4 has activations of this size.
    mapped, kept = _faults_per_round("retain", 8, 48), _faults_per_round("notrim", 8, 48)
    assert mapped > 2_000, f"48 MiB blocks were not mapped afresh ({mapped} faults/round): nothing to compare"
    assert kept * 100 < mapped, (mapped, kept)


@glibc_only
def test_inference_form_keeps_the_heap_but_maps_large_blocks():
    # No trimming: a freed 384 MiB working set of 8 MiB blocks is reused ...
    trimmed, kept = _faults_per_round("retain", 48, 8), _faults_per_round("infer", 48, 8)
    assert trimmed > 2_000 and kept * 100 < trimmed, (trimmed, kept)
    # ... but blocks above the 32 MiB cap are still mapped and unmapped, each handed back whole
    # (the heap never holds them, so it cannot grow past the live peak with them).
    mapped, infer = _faults_per_round("retain", 8, 48), _faults_per_round("infer", 8, 48)
    assert mapped > 2_000 and infer > mapped / 2, (mapped, infer)


def test_trim_threshold_must_fit_a_c_int():
    with pytest.raises(ValueError, match="trim_threshold"):
        heap.retain_freed_memory(trim_threshold=2**31)
    with pytest.raises(ValueError, match="trim_threshold"):
        heap.retain_freed_memory(trim_threshold=-5)
