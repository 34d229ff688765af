"""`vsrx export`: ONNX graphs of standard operators that onnxruntime runs like PyTorch, at any size."""

import sys

import numpy as np
import pytest
import torch

from clips import pattern
from helpers import cli, tiny_edvr
from vsrx.errors import UsageError
from vsrx.models import save_model
from vsrx.models.spynet import SpyNet


def tiny(align, offsets, tsa, flow_guided=False):
    model = tiny_edvr(align, offsets, with_tsa=tsa, flow_guided=flow_guided).eval()
    for aligner in model.aligners().values():  # offsets of a few pixels, not the zero init
        torch.nn.init.normal_(aligner.conv_offset.weight, std=0.05)
        torch.nn.init.normal_(aligner.conv_offset.bias, std=1.0)
    return model


def frames(batch, t, h, w):
    """Windows of a moving pattern with fine texture, (batch, t, 3, h, w) in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w]
    texture = 40 * np.sin(x * 0.9) * np.cos(y * 0.7)
    windows = [[np.clip(pattern(3 * b + i, (w, h)) + texture[..., None], 0, 255) for i in range(t)] for b in range(batch)]
    return torch.from_numpy(np.array(windows, dtype=np.float32) / 255).permute(0, 1, 4, 2, 3).contiguous()


def run_onnx(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("tsa", [False, True], ids=["fusion", "tsa"])
@pytest.mark.parametrize("align,offsets,flow_guided", [("decomp", 5, False), ("flow", 1, False), ("dcn", 9, False), ("decomp", 5, True)],
                         ids=["decomp5", "flow", "dcn", "decomp5-flow-guided"])
def test_graph_matches_pytorch_at_another_size(tmp_path, align, offsets, flow_guided, tsa):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from vsrx.export import export_onnx

    model = tiny(align, offsets, tsa, flow_guided)
    result = export_onnx(model, tmp_path / "m.onnx", size=(16, 24))
    assert result.mode == ("decomp-9" if align == "dcn" else model.config.mode_name)
    # Standard operators only: no custom domain, no DeformConv; the aligners are GridSample plus a 1x1 Conv.
    proto = onnx.load(str(result.path))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert all(onnx.defs.has(op) for op in result.ops), result.ops
    assert "GridSample" in result.ops and "DeformConv" not in result.ops
    assert result.ops == sorted({n.op_type for n in proto.graph.node})
    # Another batch and size than the traced ones: batch, height and width are truly dynamic.
    x = frames(2, 3, 28, 44)
    with torch.no_grad():
        expected = model(x).numpy()  # the dcn model runs torchvision's deform_conv2d here
    got = run_onnx(result.path, x)
    assert got.shape == (2, 3, 112, 176)
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_export_command_layouts_fp16_and_refusals(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = tiny("decomp", 3, False)
    weights = str(save_model(model, tmp_path / "m.safetensors"))
    out = tmp_path / "m.onnx"
    result = cli("export", weights, out, "--layout", "bchw", "--fp16", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert "decomp-3, T=3, layout bchw, opset 18, fp16" in result.output
    x = frames(1, 3, 20, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(out, x.flatten(1, 2))  # (batch, 3T, H, W): the frames' RGB stacked on channels
    assert got.dtype == np.float32 and got.shape == (1, 3, 80, 128)
    assert np.abs(got - expected).max() < 5e-3  # fp16 inside, within a grey level of fp32
    again = cli("export", weights, out)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output and "Traceback" not in again.output
    flow = str(save_model(SpyNet(), tmp_path / "flow.safetensors"))
    refused = cli("export", flow, tmp_path / "f.onnx")
    assert refused.exit_code == 2 and "only super-resolution (EDVR) models export" in refused.output
    assert not (tmp_path / "f.onnx").exists()
    bad = cli("export", weights, tmp_path / "o.onnx", "--opset", "15")
    assert bad.exit_code == 2 and not (tmp_path / "o.onnx").exists()


def test_export_without_onnx_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    from vsrx.export import require_onnx

    with pytest.raises(UsageError, match=r'pip install "vsrx\[onnx\]"'):
        require_onnx()
    result = cli("export", "edvr-s", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and 'pip install "vsrx[onnx]"' in result.output
    assert not (tmp_path / "m.onnx").exists()
