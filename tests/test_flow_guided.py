"""Flow-guided alignment: every aligner's offsets are SPyNet's flow (centre -> neighbour) plus the learned residual."""

import dataclasses
import json

import pytest
import torch
from helpers import cli, tiny_edvr

from vsrx.errors import ModelError
from vsrx.models import EDVR, build_model, load_model, save_model
from vsrx.models.align import Aligner, record_offsets
from vsrx.models.config import Alignment
from vsrx.models.hooks import record_forward
from vsrx.models.spynet import SpyNet
from vsrx.ops.warp import flow_warp
from vsrx.train.trainer import TrainConfig, make_model, train


def test_a_flow_aligner_with_zero_residual_warps_by_the_flow_float64():
    """conv_offset starts at zero, so a guided flow aligner is exactly flow_warp by the given flow:
    the flow's direction is SPyNet's (ref(p) ~ supp(p + flow(p)))."""
    torch.manual_seed(0)
    a = Aligner(4, 4, 3, Alignment.of("flow")).double()
    with torch.no_grad():
        a.weight.copy_(torch.eye(4, dtype=torch.float64).view(4, 4, 1, 1))
    x, feat = torch.randn(2, 4, 6, 7, dtype=torch.float64), torch.randn(2, 3, 6, 7, dtype=torch.float64)
    flow = 3 * torch.randn(2, 2, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(a(x, feat, flow), flow_warp(x, flow), rtol=0, atol=1e-12)


def test_the_flow_moves_every_offset_of_every_group_and_leaves_the_masks():
    torch.manual_seed(1)
    a = Aligner(4, 4, 3, Alignment("decomp", offsets=5, groups=2))
    torch.nn.init.normal_(a.conv_offset.weight, std=0.5)
    feat, flow = torch.randn(1, 3, 5, 6), torch.randn(1, 2, 5, 6)
    with record_offsets({"a": a}) as recorded:
        a(torch.randn(1, 4, 5, 6), feat)
        a(torch.randn(1, 4, 5, 6), feat, flow)
    (plain, plain_masks), (guided, guided_masks) = recorded["a"]
    assert guided.shape == (1, 2, 5, 2, 5, 6)
    torch.testing.assert_close(guided - plain, flow.view(1, 1, 1, 2, 5, 6).expand_as(plain))
    torch.testing.assert_close(guided_masks, plain_masks, rtol=0, atol=0)


def test_window_flows_are_spynets_from_the_centre_and_zero_for_the_centre():
    model = tiny_edvr("decomp", 3, num_frame=3, flow_guided=True).eval()
    window = torch.rand(2, 3, 3, 16, 20)
    flows = model.window_flows(window).view(2, 3, 2, 16, 20)
    assert torch.equal(flows[:, 1], torch.zeros_like(flows[:, 1]))
    for k in (0, 2):
        torch.testing.assert_close(flows[:, k], model.spynet.flow_dy_dx(window[:, 1], window[:, k]))
    assert flows.abs().amax() > 0


def test_the_guided_model_uses_the_flow_and_needs_it():
    model = tiny_edvr("decomp", 3, num_frame=3, flow_guided=True).eval()
    plain = EDVR(dataclasses.replace(model.config, flow_guided=False)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("spynet.")})
    x = torch.rand(1, 3, 3, 16, 20)
    shift = torch.zeros(3, 2, 16, 20)
    shift[:, 1] = 2.0  # every neighbour sampled two pixels to the right
    with torch.no_grad(), record_forward([model.pcd_align], lambda m, args, out: out) as aligned:
        pyramid = tuple(level.unsqueeze(0) for level in model.extract(x[0]))
        torch.testing.assert_close(model(x), model.reconstruct_window(pyramid, x[:, 1], model.window_flows(x)))
        zero = model.reconstruct_window(pyramid, x[:, 1], torch.zeros(3, 2, 16, 20))
        model.reconstruct_window(pyramid, x[:, 1], shift)
        with pytest.raises(ModelError, match="flows"):
            model.reconstruct_window(pyramid, x[:, 1])
        torch.testing.assert_close(zero, plain(x))  # zero flow: the unguided model
    assert (aligned[3] - aligned[2]).abs().amax() > 0.1 * aligned[2].abs().amax()  # the flow moved the neighbours
    assert not any(p.requires_grad for p in model.spynet.parameters())


def test_a_guided_model_saves_and_loads_with_its_spynet(tmp_path):
    model = tiny_edvr("flow", 1, num_frame=3, flow_guided=True).eval()
    again = load_model(save_model(model, tmp_path / "fg.safetensors"))
    assert again.config == model.config and again.config.flow_guided
    assert again.config.mode_name == "flow+flow-guided"
    x = torch.rand(1, 3, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_training_starts_a_guided_model_from_plain_weights_and_the_given_spynet(tmp_path):
    """--init-from an unguided model and --spynet FILE: the model's weights, that SPyNet; and a short run trains."""
    plain = build_model("edvr-s", "decomp", 3, 2, num_frame=3)
    plain_path = save_model(plain, tmp_path / "plain.safetensors")
    torch.manual_seed(9)
    spynet = SpyNet()
    spynet_path = save_model(spynet, tmp_path / "spynet.safetensors")
    cfg = TrainConfig(dataset="synthetic", out=str(tmp_path / "run"), preset="edvr-s", align="decomp", offsets=3, groups=2,
                      frames=3, flow_guided=True, init_from=str(plain_path), spynet=str(spynet_path), batch=2, patch=32,
                      iters=2, log_every=1, save_every=2, device="cpu")
    model = make_model(cfg)
    for name, value in model.state_dict().items():
        source = spynet.state_dict()[name.removeprefix("spynet.")] if name.startswith("spynet.") else plain.state_dict()[name]
        assert torch.equal(value, source), name
    trained = load_model(train(cfg, log=lambda *a: None))
    assert trained.config.flow_guided
    torch.testing.assert_close(trained.spynet.state_dict(), spynet.state_dict(), rtol=0, atol=0)  # SPyNet stays fixed
    assert not torch.equal(trained.pcd_align.cas_dcnpack.weight, plain.pcd_align.cas_dcnpack.weight)


def test_cli_train_flow_guided_uses_the_bundled_spynet_by_default(tmp_path):
    result = cli("train", "--dataset", "synthetic", "--preset", "edvr-s", "--align", "flow", "--frames", "3", "--batch", "1",
                 "--patch", "16", "--iters", "1", "--device", "cpu", "--flow-guided", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.config.flow_guided and model.config.mode_name == "flow+flow-guided"
    torch.testing.assert_close(model.spynet.state_dict(), load_model("spynet").state_dict(), rtol=0, atol=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["flow_guided"] is True  # a resumed run stays flow-guided
