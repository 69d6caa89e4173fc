"""TCNet (Li 2025): a large-kernel CNN branch and a Transformer branch, fused per scale, U-Net decoder.

``docs/model.md`` describes the network as built and every choice where the paper is silent;
the project design note it follows is summarised there, with the deviations in ``docs/deviations.md``.

    image ─ Stem ─ LKM stage 1 ─ LKM stage 2 ─ LKM stage 3 ─ LKM stage 4      C_1..C_4  (CNN branch)
          └ PatchEmbed ─ ETM 1 ─ ETM 2 ─ ETM 3 ─ ETM 4                        T_1..T_4  (Transformer)
    MFM_i(C_i, T_i, F_{i-1}) -> F_i   (MHSA inside MFM_3, MFM_4)
    decoder(F_1..F_4) -> logits B×K×H×W
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from tcnet.models.decoder import UNetDecoder, upsample_to
from tcnet.models.etm import ETMStage
from tcnet.models.layers import maybe_ham
from tcnet.models.lk_conv import check_lk_impl
from tcnet.models.lkm import LKMStage, Stem
from tcnet.models.mfm import MFM

ATTENTION_PLACEMENTS = ("none", "all_conv", "skip", "upsample", "input_single_output", "input_four_output")


@dataclass(frozen=True)
class TCNetConfig:
    """Every hyper-parameter of TCNet; the registered variants differ only in the first three."""

    base_channels: int = 16  # C: stage widths [C, 2C, 4C, 8C]
    lkm_depths: tuple[int, ...] = (1, 1, 1, 1)  # LKM blocks per stage
    etm_depths: tuple[int, ...] = (1, 1, 1, 1)  # ETM blocks per stage
    num_classes: int = 1  # 1: one logit channel (sigmoid); K > 1: K channels (softmax)
    in_channels: int = 3
    lk_size: int = 31  # the large depthwise kernel (LKM and ETM)
    lk_impl: str = "auto"  # auto | direct | fft | mixed (tcnet.models.lk_conv)
    attention_placement: str = "all_conv"  # where HAM goes; the paper's best
    deep_supervision: bool = False  # train-mode forward returns [main, aux...]
    use_etm: bool = True  # ablation: the Transformer branch
    use_mfm: bool = True  # ablation: the fusion module (else skip = C_i + T_i)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)  # per stage (ETM; MFM at the two coarsest scales)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # key/value spatial reduction per stage
    mlp_ratio: float = 4.0  # ETM MLP width ratio

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.base_channels * 2**i for i in range(4))

    def validate(self) -> "TCNetConfig":
        if self.attention_placement not in ATTENTION_PLACEMENTS:
            from tcnet.config import did_you_mean

            raise ValueError(
                f"unknown attention_placement {self.attention_placement!r}"
                f"{did_you_mean(self.attention_placement, ATTENTION_PLACEMENTS)}; "
                f"valid: {', '.join(ATTENTION_PLACEMENTS)}"
            )
        check_lk_impl(self.lk_impl)
        for name in ("lkm_depths", "etm_depths", "num_heads", "sr_ratios"):
            v = getattr(self, name)
            if len(v) != 4 or any(int(d) < 0 for d in v):
                raise ValueError(f"{name} must be 4 non-negative integers (one per stage), got {v!r}")
        if self.num_classes < 1 or self.in_channels < 1 or self.base_channels < 1 or self.lk_size < 1:
            raise ValueError("num_classes, in_channels, base_channels and lk_size must be >= 1")
        for dim, heads in zip(self.dims, self.num_heads):
            if heads < 1 or dim % heads:
                raise ValueError(f"stage width {dim} is not divisible by num_heads {heads}")
        return self


class TCNet(nn.Module):
    """TCNet: ``B×in_channels×H×W -> B×num_classes×H×W`` logits (H, W multiples of 32).

    In training mode with ``deep_supervision`` the forward returns ``[main, aux_1/8, aux_1/16,
    aux_1/32]``, every one at the input size; otherwise (and always in eval mode) the main logits.
    """

    def __init__(self, config: TCNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or TCNetConfig()
        if kwargs:
            fields = {f.name for f in dataclasses.fields(TCNetConfig)}
            unknown = sorted(set(kwargs) - fields)
            if unknown:
                raise ValueError(f"unknown TCNet option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
            cfg = dataclasses.replace(cfg, **kwargs)
        cfg = dataclasses.replace(
            cfg, **{k: tuple(getattr(cfg, k)) for k in ("lkm_depths", "etm_depths", "num_heads", "sr_ratios")}
        ).validate()
        self.config = cfg
        dims, p = cfg.dims, cfg.attention_placement
        lk = dict(lk_size=cfg.lk_size, lk_impl=cfg.lk_impl)

        # CNN branch (always present: Table 3 keeps LKM in every row).
        self.stem = Stem(cfg.in_channels, dims[0])
        self.stem_ham = maybe_ham(p in ("input_single_output", "input_four_output"), dims[0])
        self.lkm = nn.ModuleList(
            LKMStage(dims[max(i - 1, 0)], dims[i], cfg.lkm_depths[i], downsample=i > 0, ham=p == "all_conv", **lk)
            for i in range(4)
        )
        # Transformer branch.
        self.etm = (
            nn.ModuleList(
                ETMStage(
                    cfg.in_channels if i == 0 else dims[i - 1], dims[i], cfg.etm_depths[i], first=i == 0,
                    num_heads=cfg.num_heads[i], sr_ratio=cfg.sr_ratios[i], mlp_ratio=cfg.mlp_ratio, **lk,
                )
                for i in range(4)
            )
            if cfg.use_etm
            else None
        )
        # Fusion per scale (MHSA at the two coarsest scales).
        self.mfm = (
            nn.ModuleList(
                MFM(
                    dims[i], prev_dim=dims[i - 1] if i > 0 else None,
                    num_heads=cfg.num_heads[i] if i >= 2 else 0, sr_ratio=cfg.sr_ratios[i],
                )
                for i in range(4)
            )
            if cfg.use_mfm
            else None
        )
        self.decoder = UNetDecoder(dims, cfg.num_classes, p, cfg.deep_supervision)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused skip features ``[F_1, F_2, F_3, F_4]`` at 1/4 … 1/32."""
        c = self.stem_ham(self.stem(x))
        cnn = []
        for stage in self.lkm:
            c = stage(c)
            cnn.append(c)
        if self.etm is not None:
            trans, t = [], x
            for stage in self.etm:
                t = stage(t)
                trans.append(t)
        else:
            trans = cnn  # without ETM, MFM takes T_i := C_i
        if self.mfm is None:
            return [ci + ti for ci, ti in zip(cnn, trans)] if self.etm is not None else cnn
        fused, prev = [], None
        for mfm, ci, ti in zip(self.mfm, cnn, trans):
            prev = mfm(ci, ti, prev)
            fused.append(prev)
        return fused

    def forward(self, x: torch.Tensor):
        H, W = x.shape[-2:]
        if H % 32 or W % 32:
            raise ValueError(f"TCNet needs H and W that are multiples of 32, got {H}x{W}")
        aux = self.config.deep_supervision and self.training
        logits = [upsample_to(z, (H, W)) for z in self.decoder(self.encode(x), aux=aux)]
        return logits if aux else logits[0]

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"C={c.base_channels}, lkm={list(c.lkm_depths)}, etm={list(c.etm_depths) if c.use_etm else None}, "
            f"mfm={c.use_mfm}, placement={c.attention_placement!r}, deep_supervision={c.deep_supervision}, "
            f"lk_size={c.lk_size}, lk_impl={c.lk_impl!r}, num_classes={c.num_classes}"
        )
