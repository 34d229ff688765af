"""`vsrx export`: a whole EDVR window model as one ONNX graph of standard operators.

Deformable alignment is what usually keeps video SR out of ONNX: torchvision's ``deform_conv2d``
does not export (pytorch #68910, vision #2066). By the paper's Eq. 3 every aligner here is
bilinear sampling (ONNX GridSample, opset 16+) plus a 1x1 convolution, so decomp-N and flow
models export as they are and a dcn model exports through its exact decomp-9 form.

onnx and onnxruntime are an optional extra (``pip install "vsrx[onnx]"``); every export is
checked with onnxruntime against PyTorch before it is renamed into place.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vsrx.errors import ModelError, UsageError
from vsrx.models import EDVR, convert_alignment
from vsrx.models.weights import atomic_write

INSTALL_HINT = 'onnx export needs the onnx extra: pip install "vsrx[onnx]" (onnx and onnxruntime)'
# btchw: (batch, T, 3, H, W), EDVR's own; bchw: (batch, 3T, H, W), the T frames' RGB planes stacked on
# channels, which is how vs-mlrt passes a list of T clips (its backends take 4-D input only).
LAYOUTS = ("btchw", "bchw")
MIN_OPSET = 16  # GridSample
INPUT, OUTPUT = "input", "output"  # the names vs-mlrt's TensorRT backend expects


def require_onnx():
    """(onnx, onnxruntime), or a UsageError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return onnx, onnxruntime


class WindowGraph(nn.Module):
    """What is exported: float32 LR window in [0, 1] -> float32 (batch, 3, 4H, 4W).

    ``layout`` "bchw" takes the T frames stacked on channels. A half-precision model computes in
    float16 between its float32 input and output (see `EDVR.extract`; aligners sample in float32).
    """

    def __init__(self, model: EDVR, layout: str = "btchw") -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == "bchw":
            b, _, h, w = x.shape  # explicit sizes: the tracer keeps them dynamic (unflatten would bake them in)
            x = x.reshape(b, self.model.config.num_frame, 3, h, w)
        return self.model(x).float()


def exportable(model: nn.Module) -> EDVR:
    """The model as it exports: an EDVR in eval mode, float32 on the CPU, (N, C, H, W), and every
    aligner the decomposition (a dcn model converted to decomp-9 exactly, no torchvision kernel;
    on the CPU the fused CUDA kernel is never taken). A copy: the caller's model is left as it is."""
    if not isinstance(model, EDVR):
        raise UsageError(f"only super-resolution (EDVR) models export, not a {type(model).__name__}")
    model = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    if model.config.align == "dcn":
        model = convert_alignment(model, "decomp", 9)
    return model


@dataclass
class ExportResult:
    path: Path
    mode: str  # the alignment the graph computes (a dcn model: decomp-9)
    layout: str
    opset: int
    fp16: bool
    num_frame: int
    ops: list[str]
    max_diff: float  # onnxruntime against the PyTorch float32 model, on the check window
    bytes: int


def export_onnx(model: nn.Module, out: str | os.PathLike, *, layout: str = "btchw", opset: int = 17, fp16: bool = False,
                overwrite: bool = False, size: tuple[int, int] = (32, 48), check_size: tuple[int, int] = (24, 40)) -> ExportResult:
    """Export ``model`` to ``out`` with dynamic batch, height and width (multiples of 4).

    Traced at ``size`` (LR H, W); the file is then checked with onnxruntime at ``check_size`` and
    batch 2 against PyTorch in float32, and only then renamed onto ``out``.
    """
    onnx, ort = require_onnx()
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose {' or '.join(LAYOUTS)}")
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: GridSample needs opset {MIN_OPSET} or later")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    model = exportable(model)
    t = model.config.num_frame
    gen = torch.Generator().manual_seed(0)
    sample, window = (window_input(2, t, s, layout, gen) for s in (size, check_size))
    with torch.no_grad():
        expected = WindowGraph(model, layout)(window).numpy()  # the float32 reference, also for an fp16 export
    graph = WindowGraph(model.half() if fp16 else model, layout)
    axes = {INPUT: {0: "batch", layout.index("h"): "height", layout.index("w"): "width"},
            OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"}}
    ops: list[str] = []
    diffs: list[float] = []

    def write(tmp: str) -> None:
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks and the legacy exporter's deprecation
            try:
                torch.onnx.export(graph, (sample,), buffer, input_names=[INPUT], output_names=[OUTPUT],
                                  opset_version=opset, dynamic_axes=axes, dynamo=False)
            except Exception as e:  # noqa: BLE001 (the exporter raises many types; its message says what failed)
                raise ModelError(f"ONNX export failed at opset {opset}: {first_line(e)}") from None
        data = buffer.getvalue()
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures surface as the exception below, not as log lines
        try:
            proto = onnx.load_from_string(data)
            onnx.checker.check_model(proto)
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            got = session.run(None, {INPUT: window.numpy()})[0]
        except Exception as e:  # noqa: BLE001 (onnx's and onnxruntime's errors have no common public base)
            raise ModelError(f"the exported graph does not check or run at {check_size[0]}x{check_size[1]}: {first_line(e)}") from None
        ops.extend(graph_ops(proto))
        if got.shape != expected.shape:
            raise ModelError(f"the exported graph gives {got.shape} at the check size, PyTorch {expected.shape}")
        diffs.append(float(abs(got - expected).max()))
        Path(tmp).write_bytes(data)

    path = atomic_write(out, write)
    return ExportResult(path, model.config.mode_name, layout, opset, fp16, t, ops, diffs[0], path.stat().st_size)


def window_input(batch: int, num_frame: int, size: tuple[int, int], layout: str, generator: torch.Generator | None = None) -> Tensor:
    """A random LR window in the graph's input layout."""
    x = torch.rand(batch, num_frame, 3, *size, generator=generator)
    return x.flatten(1, 2) if layout == "bchw" else x


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def graph_ops(proto) -> list[str]:
    """The graph's operator types, as domain:op for any not in the default ONNX domain."""
    return sorted({f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in proto.graph.node})
