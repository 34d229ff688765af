"""The EDVR family: BasicSR layout, parameter counts, exact dcn <-> decomp-9 equivalence, weights files."""

import argparse
import math

import pytest
import torch
from helpers import cli, tiny_edvr

import vsrx
from vsrx.errors import ModelError, UsageError
from vsrx.models import EDVR, EDVRConfig, build_model, load_model, save_model
from vsrx.models.align import Aligner, kernel_grid, record_offsets
from vsrx.models.config import Alignment
from vsrx.models.weights import convert_checkpoint


def tiny(align="dcn", offsets=9, groups=None, with_tsa=True) -> EDVR:
    return tiny_edvr(align, offsets, groups=groups, with_tsa=with_tsa)


def scramble_offsets(model: torch.nn.Module, std: float) -> None:
    """Give every offset predictor large random weights so samples land far outside the image."""
    for a in model.modules():
        if isinstance(a, Aligner):
            torch.nn.init.normal_(a.conv_offset.weight, std=std)
            torch.nn.init.normal_(a.conv_offset.bias, std=std)


def basicsr_edvr_keys(nf: int, t: int, g: int, n_ext: int, n_rec: int) -> dict[str, tuple]:
    """BasicSR's EDVR state dict (keys and shapes), written out from the architecture description."""
    keys: dict[str, tuple] = {}

    def conv(name, cin, cout, k):
        keys[f"{name}.weight"] = (cout, cin, k, k)
        keys[f"{name}.bias"] = (cout,)

    conv("conv_first", 3, nf, 3)
    for i in range(n_ext):
        conv(f"feature_extraction.{i}.conv1", nf, nf, 3)
        conv(f"feature_extraction.{i}.conv2", nf, nf, 3)
    for lv in ("l2", "l3"):
        conv(f"conv_{lv}_1", nf, nf, 3)
        conv(f"conv_{lv}_2", nf, nf, 3)
    for lv in ("l3", "l2", "l1"):
        conv(f"pcd_align.offset_conv1.{lv}", 2 * nf, nf, 3)
        conv(f"pcd_align.offset_conv2.{lv}", nf if lv == "l3" else 2 * nf, nf, 3)
        if lv != "l3":
            conv(f"pcd_align.offset_conv3.{lv}", nf, nf, 3)
            conv(f"pcd_align.feat_conv.{lv}", 2 * nf, nf, 3)
        conv(f"pcd_align.dcn_pack.{lv}", nf, nf, 3)
        conv(f"pcd_align.dcn_pack.{lv}.conv_offset", nf, g * 27, 3)
    conv("pcd_align.cas_offset_conv1", 2 * nf, nf, 3)
    conv("pcd_align.cas_offset_conv2", nf, nf, 3)
    conv("pcd_align.cas_dcnpack", nf, nf, 3)
    conv("pcd_align.cas_dcnpack.conv_offset", nf, g * 27, 3)
    conv("fusion.temporal_attn1", nf, nf, 3)
    conv("fusion.temporal_attn2", nf, nf, 3)
    conv("fusion.feat_fusion", t * nf, nf, 1)
    conv("fusion.spatial_attn1", t * nf, nf, 1)
    conv("fusion.spatial_attn2", 2 * nf, nf, 1)
    conv("fusion.spatial_attn3", nf, nf, 3)
    conv("fusion.spatial_attn4", nf, nf, 1)
    conv("fusion.spatial_attn5", nf, nf, 3)
    conv("fusion.spatial_attn_l1", nf, nf, 1)
    conv("fusion.spatial_attn_l2", 2 * nf, nf, 3)
    conv("fusion.spatial_attn_l3", nf, nf, 3)
    conv("fusion.spatial_attn_add1", nf, nf, 1)
    conv("fusion.spatial_attn_add2", nf, nf, 1)
    for i in range(n_rec):
        conv(f"reconstruction.{i}.conv1", nf, nf, 3)
        conv(f"reconstruction.{i}.conv2", nf, nf, 3)
    conv("upconv1", nf, 4 * nf, 3)
    conv("upconv2", nf, 256, 3)
    conv("conv_hr", 64, 64, 3)
    conv("conv_last", 64, 3, 3)
    return keys


def test_edvr_m_state_dict_is_basicsr_layout():
    model = build_model("edvr-m", align="dcn", num_frame=5)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == basicsr_edvr_keys(64, 5, 8, 5, 10)


@pytest.mark.parametrize(
    "preset,tsa,frames,count",
    [("edvr-m", True, 5, 3_300_131), ("edvr-m", False, 5, 2_996_259), ("edvr-l", True, 5, 20_633_827), ("edvr-l", True, 7, 20_699_363)],
)
def test_parameter_counts(preset, tsa, frames, count):
    model = build_model(preset, with_tsa=tsa, num_frame=frames)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("align,offsets,groups", [("dcn", 9, 2), ("decomp", 5, 2), ("decomp", 1, 4), ("flow", 1, 1)])
@pytest.mark.parametrize("with_tsa", [True, False])
def test_output_shape(align, offsets, groups, with_tsa):
    model = tiny(align, offsets, groups, with_tsa).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, 3, 12, 16))
    assert y.shape == (2, 3, 48, 64)


def test_alignment_spec_names_parses_and_validates():
    assert [Alignment.parse(n).name for n in ("dcn", "flow", "decomp", "decomp-5")] == ["dcn", "flow", "decomp-9", "decomp-5"]
    assert Alignment.parse("flow") == Alignment("flow", offsets=1, groups=1)
    assert Alignment.of("decomp", 5).flags == "--align decomp --offsets 5" and Alignment.of("dcn").flags == "--align dcn"
    assert EDVRConfig(align="decomp", offsets=5, groups=4, num_feat=8).alignment == Alignment("decomp", 5, 4)
    for bad in ("decomp-x", "dcn-9", "bilinear"):
        with pytest.raises(UsageError, match="unknown alignment mode"):
            Alignment.parse(bad)
    for args, message in ((("dcn", 5), "N=9"), (("flow", 1, 2), "G=N=1"), (("decomp", 0), "at least one offset")):
        with pytest.raises(ModelError, match=message):
            Alignment(*args)
    with pytest.raises(ModelError, match="cannot form 3 groups"):
        EDVRConfig(num_feat=8, groups=3)


def test_kernel_grid():
    assert kernel_grid(9) == tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert kernel_grid(1) == ((0, 0),)
    assert kernel_grid(5) == ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))
    assert kernel_grid(25) == tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3))
    for n in (3, 15, 40):
        assert len(set(kernel_grid(n))) == n


@pytest.mark.parametrize("align,offsets", [("decomp", 1), ("decomp", 3), ("decomp", 5), ("decomp", 13), ("flow", 1)])
def test_any_decomposition_runs_through_torchvision_float64(align, offsets):
    """The naive reference of `vsrx bench`: decomp-N and flow embedded in a k x k deform_conv2d."""
    from vsrx.bench import with_deform_conv_aligners

    model = tiny(align, offsets, 1 if align == "flow" else 2).double()
    scramble_offsets(model, std=3.0)
    x = torch.rand(1, 3, 3, 12, 16, dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)
        naive = with_deform_conv_aligners(model)(x)
    assert ((ours - naive).norm() / ours.norm()).item() < 1e-12


def test_decomp9_equals_dcn_float64_whole_model():
    dcn = tiny("dcn").double()
    scramble_offsets(dcn, std=8.0)
    decomp = vsrx.models.convert_alignment(dcn, "decomp", 9)
    assert decomp.config.mode_name == "decomp-9"
    x = torch.rand(2, 3, 3, 16, 12, dtype=torch.float64)
    records = {}
    for name, model in (("dcn", dcn), ("decomp", decomp)):
        with torch.no_grad(), record_offsets(model.aligners()) as recorded:
            y = model(x)
        records[name] = (y, recorded)
    y1, y2 = records["dcn"][0], records["decomp"][0]
    assert ((y1 - y2).norm() / y1.norm()).item() < 1e-10
    # Offsets really do sample outside the image somewhere.
    l1 = records["dcn"][1]["pcd_align.dcn_pack.l1"][0][0]
    assert l1.abs().max() > 16  # larger than the 16x12 frame
    # Both record the same absolute offsets and masks.
    for name, a in records["dcn"][1].items():
        b = records["decomp"][1][name]
        torch.testing.assert_close(a[0][0], b[0][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a[0][1], b[0][1], rtol=1e-10, atol=1e-12)


def bilinear_zero(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Plain-loop bilinear sampling out(p) = x(p + flow(p)), zero outside, flow channels (dy, dx)."""
    c, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            y, xx = i + flow[0, i, j].item(), j + flow[1, i, j].item()
            y0, x0 = math.floor(y), math.floor(xx)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                    if 0 <= yy < h and 0 <= xc < w:
                        out[:, i, j] += wy * wx * x[:, yy, xc]
    return out


def test_flow_mode_is_a_plain_bilinear_warp():
    torch.manual_seed(1)
    a = Aligner(4, 4, 3, Alignment.of("flow")).double()
    with torch.no_grad():
        a.weight.copy_(torch.eye(4, dtype=torch.float64).view(4, 4, 1, 1))
        torch.nn.init.normal_(a.conv_offset.weight, std=2.0)
    x, feat = torch.randn(1, 4, 5, 6, dtype=torch.float64), torch.randn(1, 3, 5, 6, dtype=torch.float64)
    with record_offsets({"a": a}) as recorded:
        y = a(x, feat)
    flow = recorded["a"][0][0][0, 0, 0]  # (2, H, W), absolute (dy, dx)
    assert recorded["a"][0][1] is None
    torch.testing.assert_close(y[0], bilinear_zero(x[0], flow), rtol=0, atol=1e-12)


def test_decomp_n1_g1_is_modulated_warp_then_1x1():
    torch.manual_seed(2)
    a = Aligner(3, 5, 3, Alignment("decomp", offsets=1, groups=1)).double()
    torch.nn.init.normal_(a.conv_offset.weight, std=2.0)
    x, feat = torch.randn(1, 3, 6, 5, dtype=torch.float64), torch.randn(1, 3, 6, 5, dtype=torch.float64)
    with record_offsets({"a": a}) as recorded:
        y = a(x, feat)
    flow, mask = recorded["a"][0][0][0, 0, 0], recorded["a"][0][1][0, 0, 0]
    warped = bilinear_zero(x[0], flow) * mask
    expected = torch.einsum("oc,chw->ohw", a.weight[:, :, 0, 0], warped) + a.bias.view(-1, 1, 1)
    torch.testing.assert_close(y[0], expected, rtol=0, atol=1e-12)


def test_recording_is_off_outside_its_block_and_has_grid_positions():
    model = tiny("decomp", 5)
    name = "pcd_align.cas_dcnpack"
    with record_offsets({name: model.aligners()[name]}) as recorded:
        model(torch.rand(1, 3, 3, 8, 8))
    model(torch.rand(1, 3, 3, 8, 8))  # after the block: nothing more is recorded
    assert len(recorded[name]) == 1
    assert not any(m._forward_hooks for m in model.modules())
    offsets, masks = recorded[name][0]
    assert offsets.shape == (3, 2, 5, 2, 8, 8) and masks.shape == (3, 2, 5, 8, 8)
    # conv_offset starts at zero: absolute offsets are the kernel grid, masks are 0.5.
    torch.testing.assert_close(offsets[0, 0, :, :, 0, 0], torch.tensor(kernel_grid(5), dtype=torch.float32))
    assert torch.all(masks == 0.5)


def test_recorded_offsets_train_the_offset_predictor():
    """A loss on what record_offsets returns reaches conv_offset (the offset-fidelity loss's path)."""
    model = tiny("decomp", 5)
    aligner = model.aligners()["pcd_align.dcn_pack.l1"]
    with record_offsets({"l1": aligner}) as recorded:
        model(torch.rand(1, 3, 3, 8, 8))
    recorded["l1"][0][0].square().sum().backward()
    assert aligner.conv_offset.weight.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    model = tiny("decomp", 3, with_tsa=False).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path)
    assert again.config == model.config
    x = torch.rand(1, 3, 3, 8, 12)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_load_model_converts_dcn_to_decomp9_exactly_and_refuses_others(tmp_path):
    model = tiny("dcn").double()
    scramble_offsets(model, 1.0)
    path = save_model(model, tmp_path / "dcn.safetensors")
    decomp = load_model(path, align="decomp", offsets=9).double()
    x = torch.rand(1, 3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y1, y2 = model(x), decomp(x)
    assert ((y1 - y2).norm() / y1.norm()).item() < 1e-10
    with pytest.raises(ModelError, match="cannot run as decomp with 5 offsets"):
        load_model(path, align="decomp", offsets=5)
    with pytest.raises(ModelError, match="cannot run as flow"):
        load_model(path, align="flow")


def test_convert_basicsr_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = EDVR(EDVRConfig(num_feat=8, num_frame=5, groups=2, num_extract_block=2, num_reconstruct_block=3,
                            with_tsa=True, hr_feat=16)).eval()
    torch.save({"params": model.state_dict()}, tmp_path / "EDVR_official.pth")
    converted, out = convert_checkpoint(tmp_path / "EDVR_official.pth", tmp_path / "edvr.safetensors")
    assert converted.config == model.config
    x = torch.rand(1, 5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(out)(x), model(x))
    # Through the CLI too.
    result = cli("convert", tmp_path / "EDVR_official.pth", tmp_path / "cli.safetensors")
    assert result.exit_code == 0, result.output
    assert "dcn, 8 features, 5 frames, G=2" in result.output


def test_convert_rejects_mismatched_checkpoints(tmp_path):
    state = tiny("dcn").state_dict()
    broken = dict(state)
    del broken["upconv1.bias"]
    broken["conv_hr.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save({"params": broken}, tmp_path / "broken.pth")
    with pytest.raises(ModelError, match=r"missing keys: upconv1\.bias; wrong shapes: conv_hr\.weight"):
        convert_checkpoint(tmp_path / "broken.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    torch.save({"params": {"foo.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not an EDVR checkpoint"):
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "x.safetensors")
    torch.save({"params": {"w": torch.zeros(1)}, "opt": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    result = cli("convert", tmp_path / "pickled.pth", tmp_path / "x.safetensors")
    assert result.exit_code == 1
    assert "not a loadable tensor checkpoint" in result.output and "Traceback" not in result.output


def test_cli_lists_commands_and_version():
    result = cli("--help")
    for command in ("upscale", "train", "eval", "viz-offsets", "models", "convert"):
        assert command in result.output
    assert vsrx.__version__ in cli("--version").output


def test_channels_last_tail_gives_the_same_output():
    model = tiny("decomp", 5, 2).eval()
    scramble_offsets(model, std=2.0)
    x = torch.rand(1, 3, 3, 12, 16)
    with torch.no_grad():
        plain = model(x)
        model.channels_last_tail()
        assert model.conv_hr.weight.is_contiguous(memory_format=torch.channels_last)
        assert (model(x) - plain).abs().max().item() < 1e-5
