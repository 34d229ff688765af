"""Weights files: safetensors with the model config in metadata, exact alignment-mode
conversion, and conversion of BasicSR checkpoints (.pth) into that format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from vsrx.errors import InputError, ModelError
from vsrx.io.atomic import atomic_write
from vsrx.models.align import dcn_to_decomp, decomp_to_dcn
from vsrx.models.config import Alignment
from vsrx.models.edvr import EDVR, PRESETS, EDVRConfig

ARCH_KEY, CONFIG_KEY = "vsrx.arch", "vsrx.config"


def build_model(
    preset: str = "edvr-m",
    align: str = "dcn",
    offsets: int | None = None,
    groups: int | None = None,
    num_frame: int = 7,
    with_tsa: bool | None = None,
    flow_guided: bool = False,
    reconstruct_blocks: int | None = None,
) -> EDVR:
    """A freshly initialised EDVR of a preset (edvr-s, edvr-m, edvr-l) and alignment mode.

    offsets and groups default as `Alignment.of` fills them (G = N = 1 for flow), else G is the
    preset's; with_tsa and reconstruct_blocks (the residual blocks of the reconstruction trunk)
    default to the preset's. A flow-guided model's SPyNet is freshly initialised too (load trained
    weights into ``.spynet``).
    """
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    arch = dict(PRESETS[preset], num_frame=num_frame, flow_guided=flow_guided)
    if with_tsa is not None:
        arch["with_tsa"] = with_tsa
    if reconstruct_blocks is not None:
        arch["num_reconstruct_block"] = reconstruct_blocks
    return EDVR(EDVRConfig(**arch).with_alignment(Alignment.of(align, offsets, groups)))


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a model's weights and config to a safetensors file, atomically."""
    arch, config = _describe(model)
    meta = {ARCH_KEY: arch, CONFIG_KEY: config, **(metadata or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _describe(model: nn.Module) -> tuple[str, str]:
    if isinstance(model, EDVR):
        return "edvr", model.config.to_json()
    from vsrx.models.spynet import SpyNet

    if isinstance(model, SpyNet):
        return "spynet", "{}"
    raise ModelError(f"cannot save a {type(model).__name__}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors weights file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable safetensors weights file ({e})") from None


def load_weights(path: str | os.PathLike, align: str | None = None, offsets: int | None = None) -> nn.Module:
    """Rebuild the model stored in a vsrx safetensors file, optionally in another alignment mode."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    meta = read_metadata(path)
    arch = meta.get(ARCH_KEY)
    if arch == "spynet":
        from vsrx.models.spynet import SpyNet

        return load_state(SpyNet(), path)
    if arch != "edvr" or CONFIG_KEY not in meta:
        raise ModelError(f"{path}: no vsrx model config in its metadata (convert it with `vsrx convert`)")
    config = EDVRConfig.from_json(meta[CONFIG_KEY])
    model = load_state(EDVR(config), path)
    if (align or config.align) != config.align or (offsets or config.offsets) != config.offsets:
        model = convert_alignment(model, align or config.align, offsets)
    return model


def load_state(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of a safetensors file into ``model`` (strictly: every key, every shape);
    a one-line ModelError when the file is unreadable or does not fit. Returns ``model``."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path}: corrupt weights file ({e})") from None
    _load_strict(model, state, path)
    return model


def _load_strict(model: nn.Module, state: dict[str, Tensor], source: object) -> None:
    """load_state_dict(strict=True), with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            shown = ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelError(f"{source}: checkpoint does not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def convert_alignment(model: EDVR, align: str, offsets: int | None = None) -> EDVR:
    """The same function in another alignment mode: dcn <-> decomp-9 is exact (Eq. 3).

    Any other change of mode or N changes the function and is refused.
    """
    src = model.config.alignment
    target = Alignment.of(align, offsets, 1 if align == "flow" else src.groups)
    if target == src:
        return model
    if {src.name, target.name} != {"dcn", "decomp-9"}:
        raise ModelError(
            f"a {src.name} model cannot run as {align}"
            + (f" with {target.offsets} offsets" if align == "decomp" else "")
            + "; only dcn <-> decomp with 9 offsets is an exact conversion"
        )
    reshape = dcn_to_decomp if align == "decomp" else decomp_to_dcn
    state = model.state_dict()
    for name in model.aligners():
        state[f"{name}.weight"] = reshape(state[f"{name}.weight"])
    like = next(model.parameters())
    converted = EDVR(model.config.with_alignment(target)).to(like)
    converted.load_state_dict(state, strict=True)
    return converted.train(model.training)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a .pth checkpoint (BasicSR 'params'/'params_ema' or a plain state dict), never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a loadable tensor checkpoint ({first})") from None
    if isinstance(ckpt, dict):
        for key in ("params", "params_ema", "state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise ModelError(f"{path}: no state dict of tensors found (expected the 'params' key of a BasicSR checkpoint)")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def infer_edvr_config(state: dict[str, Tensor], num_frame: int | None = None) -> EDVRConfig:
    """Read EDVR hyper-parameters off a BasicSR-layout state dict's shapes."""
    if any(k.startswith(("predeblur.", "stride_conv_l")) for k in state):
        raise ModelError("EDVR with pre-deblurring or HR input is not supported (x4 SR models only)")
    if "conv_first.weight" not in state or "pcd_align.dcn_pack.l1.conv_offset.weight" not in state:
        old = any(k.startswith(("pcd_align.L1_", "fea_L2_conv1", "recon_trunk.")) for k in state)
        raise ModelError(
            "checkpoint uses the old EDVR key names; convert it to BasicSR's names first"
            if old
            else "not an EDVR checkpoint in BasicSR layout (no conv_first / pcd_align.dcn_pack.l1 keys)"
        )
    nf = state["conv_first.weight"].shape[0]
    with_tsa = "fusion.temporal_attn1.weight" in state
    fusion_in = state["fusion.feat_fusion.weight" if with_tsa else "fusion.weight"].shape[1]
    frames = fusion_in // nf
    if num_frame is not None and num_frame != frames:
        raise ModelError(f"checkpoint fuses {frames} frames, not {num_frame}")
    off_ch = state["pcd_align.dcn_pack.l1.conv_offset.weight"].shape[0]
    weight = state["pcd_align.dcn_pack.l1.weight"]
    if weight.dim() == 4 and weight.shape[-2:] == (3, 3):
        align, offsets, groups = "dcn", 9, off_ch // 27
    else:
        offsets = weight.shape[1] // nf
        align = "flow" if off_ch == 2 else "decomp"
        groups = 1 if align == "flow" else off_ch // (3 * offsets)

    def count(prefix: str) -> int:
        return len({k.split(".")[1] for k in state if k.startswith(prefix + ".")})

    return EDVRConfig(
        num_feat=nf,
        num_frame=frames,
        groups=groups,
        num_extract_block=count("feature_extraction"),
        num_reconstruct_block=count("reconstruction"),
        with_tsa=with_tsa,
        align=align,
        offsets=offsets,
        hr_feat=state["conv_hr.weight"].shape[0],
        flow_guided=any(k.startswith("spynet.") for k in state),
    )


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None, num_frame: int | None = None) -> tuple[nn.Module, Path]:
    """Convert a BasicSR EDVR or SPyNet .pth checkpoint to a vsrx safetensors weights file."""
    state = read_checkpoint(src)
    if arch is None:
        arch = "spynet" if any(k.startswith("basic_module.") for k in state) else "edvr"
    if arch == "spynet":
        from vsrx.models.spynet import SpyNet

        model: nn.Module = SpyNet()
    elif arch == "edvr":
        model = EDVR(infer_edvr_config(state, num_frame))
    else:
        raise ModelError(f"unknown architecture {arch!r}; choose edvr or spynet")
    _load_strict(model, state, src)
    return model, save_model(model, dst, {"vsrx.converted_from": Path(src).name})
