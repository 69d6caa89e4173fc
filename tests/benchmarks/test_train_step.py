"""The train-step benchmark's ``--profile`` tables: taken under the settings the steps were timed with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks.train_step as train_step  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402


def _denormals_flushed() -> bool:
    # With flush-to-zero / denormals-are-zero on, a denormal operand reads as 0.
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


def test_profile_runs_with_denormals_flushed_as_the_timed_steps(tmp_path, monkeypatch):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    torch.set_flush_denormal(False)
    seen = []
    original = train_step.profile_step

    def recording(step):
        seen.append(_denormals_flushed())
        return original(step)

    monkeypatch.setattr(train_step, "profile_step", recording)
    out = tmp_path / "train_step.json"
    assert main(["train_step", "--tiny", "--profile", "--json", str(out)]) == 0
    assert seen and all(seen)  # every profiled setting ran with denormals flushed, as the timing did
    assert not _denormals_flushed()  # and the setting is back to torch's default afterwards
    profile = json.loads(out.read_text())["tables"]["profile"]
    assert set(profile) == {"tcnet_tiny auto NCHW", "unet NCHW"}  # the best TCNet setting and U-Net
    for tables in profile.values():
        assert tables["top_ops"] and tables["by_phase"]
        assert tables["by_kind"][-1]["kind"] == "total (one step)"


def test_compile_adds_a_compiled_twin_of_each_model_in_the_last_layout():
    quick = train_step.common.Mode("quick")
    plain = train_step.configs_for(quick, ["tcnet_tiny"])
    both = train_step.configs_for(quick, ["tcnet_tiny"], compiled=True)
    assert both[:len(plain)] == plain  # the eager configurations first, unchanged
    assert [c.label for c in both[len(plain):]] == ["unet channels_last compiled",
                                                    "tcnet_tiny auto channels_last compiled"]
    tiny = train_step.configs_for(train_step.common.Mode("tiny"), ["tcnet_tiny"], compiled=True)
    assert [c.label for c in tiny if c.compiled] == ["unet NCHW compiled", "tcnet_tiny auto NCHW compiled"]


def test_a_compiled_configuration_steps_a_compiled_model():
    step = train_step.Step(train_step.Config("tcnet_tiny", "auto", False, compiled=True), 32, 2)
    assert isinstance(step.model, torch._dynamo.eval_frame.OptimizedModule)  # compiled on its first call
    eager = train_step.Step(train_step.Config("tcnet_tiny", "auto", False), 32, 2)
    assert not isinstance(eager.model, torch._dynamo.eval_frame.OptimizedModule)
    assert eager.first_call_s is None
    eager()
    assert eager.first_call_s > 0 and len(eager.faults) == 1


def test_bf16_adds_an_autocast_twin_of_every_configuration():
    quick = train_step.common.Mode("quick")
    plain = train_step.configs_for(quick, ["tcnet_tiny"])
    both = train_step.configs_for(quick, ["tcnet_tiny"], bf16=True)
    assert both[:len(plain)] == plain
    assert [c.label for c in both[len(plain):]] == [c.label + " bf16" for c in plain]


def test_a_bf16_step_runs_under_cpu_autocast_and_is_compared_with_bf16_unet(tmp_path):
    step = train_step.Step(train_step.Config("tcnet_tiny", "auto", False, bf16=True), 32, 2)
    dtypes = []
    step.model.stem[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    step()
    assert dtypes == [torch.bfloat16]

    out = tmp_path / "train_step.json"
    assert main(["train_step", "--tiny", "--bf16", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {r["config"]: r for r in payload["tables"]["steps"]}
    assert set(rows) == {"unet NCHW", "tcnet_tiny auto NCHW", "unet NCHW bf16", "tcnet_tiny auto NCHW bf16"}
    assert payload["summary"]["best_config"] == "tcnet_tiny auto NCHW"  # the verdict: float32 only
    assert rows["tcnet_tiny auto NCHW bf16"]["reference"] == "unet NCHW bf16"
    assert rows["tcnet_tiny auto NCHW"]["reference"] == "unet NCHW"
    assert rows["unet NCHW bf16"]["ratio"] == 1.0 and rows["unet NCHW"]["ratio"] == 1.0


def test_the_ratio_is_tcnets_model_flops_over_unets():
    """Paired: each repeat's model FLOP/s of the configuration over the reference's, FLOPs as counted."""
    r = train_step.paired_ratios([2.0, 4.0, 1.0], [1.0, 1.0, 1.0], flops=6.0, ref_flops=1.0)
    assert r["paired_all"] == [3.0, 1.5, 6.0] and r["paired"] == 3.0 and r["paired_range"] == "1.50-6.00"


def test_a_steps_model_flops_are_the_forward_times_batch_times_three():
    from tcnet.models.flops import model_complexity

    for name in ("tcnet_tiny", "unet"):
        by_kind = train_step.model_step_flops(name, 64, 2)
        assert by_kind["total"] == model_complexity(name, 64)["flops"] * 2 * 3
        assert sum(v for k, v in by_kind.items() if k != "total") == by_kind["total"]


def test_a_channels_last_step_runs_the_model_and_batch_channels_last():
    step = train_step.Step(train_step.Config("tcnet_tiny", lk_impl="fft", channels_last=True), 32, 2)
    assert step.x.is_contiguous(memory_format=torch.channels_last)
    convs = [m.weight for m in step.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    plain = train_step.Step(train_step.Config("tcnet_tiny", lk_impl="fft"), 32, 2)
    assert not plain.x.is_contiguous(memory_format=torch.channels_last)
