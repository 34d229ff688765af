import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli
from safetensors.torch import load_file

import vsrx
from vsrx.errors import InputError, UsageError
from vsrx.models.spynet import SpyNet
from vsrx.ops.warp import flow_warp
from vsrx.train.data import Clip
from vsrx.train.flow import (
    FlowPair,
    FlowPairs,
    FlowTrainConfig,
    augment_pair,
    evaluate_epe,
    flow_loss,
    make_spynet,
    record_levels,
    train_flow,
    validation_pairs,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """SPyNet's small convolutions gain nothing from a second thread here, and OpenMP threads
    spinning on a busy 2-core machine made this file ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(out: Path, **overrides) -> FlowTrainConfig:
    base = dict(out=str(out), iters=4, warmup=2, batch=1, patch=32, lr=1e-3, max_motion=3.0, val_pairs=2, val_size=(32, 40),
                val_motion=3.0, log_every=1, save_every=2, val_every=4, seed=3, device="cpu", workers=0)
    return FlowTrainConfig(**{**base, **overrides})


def warp_residual(pair: FlowPair, flow: torch.Tensor) -> float:
    return (flow_warp(pair.supp[None], flow[None], padding_mode="border")[0] - pair.ref).abs().mean().item()


def test_pair_flow_direction_matches_flow_dy_dx_convention() -> None:
    data = FlowPairs([], (32, 32), key=(5,), max_motion=4.0, photometric=False)
    pairs = [data.pair(i) for i in range(8)]
    assert all(p.ref.shape == p.supp.shape == (3, 32, 32) and p.flow.shape == (2, 32, 32) for p in pairs)
    moving = [p for p in pairs if p.flow.norm(dim=0).mean() > 1.0]
    assert len(moving) >= 3
    for pair in moving:
        # ref(p) ≈ supp(p + flow(p)): warping supp by the flow explains ref far better than no motion
        # or the opposite flow.
        good = warp_residual(pair, pair.flow)
        assert good < 0.5 * warp_residual(pair, -pair.flow)
        assert good < 0.5 * warp_residual(pair, torch.zeros_like(pair.flow))


def test_pairs_are_a_pure_function_of_key_and_index() -> None:
    a, b = FlowPairs([], (32, 32), key=(1,)), FlowPairs([], (32, 32), key=(1,))
    for x, y in zip(a.pair(7), b.pair(7)):
        assert torch.equal(x, y)
    assert not torch.equal(a.pair(7).ref, FlowPairs([], (32, 32), key=(2,)).pair(7).ref)


def test_pairs_from_stills() -> None:
    rng = np.random.default_rng(0)
    still = Clip("s", rng.integers(0, 256, size=(2, 80, 96, 3), dtype=np.uint8))
    pair = FlowPairs([still], (32, 32), key=(0,), scales=(2,)).pair(0)
    assert pair.ref.shape == (3, 32, 32) and pair.flow.shape == (2, 32, 32)
    # Too small for scale 4 at 32x32: only the scales that fit are drawn.
    assert all(FlowPairs([still], (32, 32), key=(0,), scales=(1, 4)).pair(i).ref.shape == (3, 32, 32) for i in range(3))
    with pytest.raises(InputError, match="smaller than"):
        FlowPairs([still], (48, 48), key=(0,), scales=(2,)).pair(0)


def test_augmentation_keeps_flow_consistent() -> None:
    pair = FlowPairs([], (32, 32), key=(9,), max_motion=4.0, photometric=False, augment=False).pair(0)
    base = warp_residual(pair, pair.flow)
    for seed in range(6):
        aug = augment_pair(FlowPair(*(t.clone() for t in pair)), np.random.default_rng(seed))
        assert warp_residual(aug, aug.flow) == pytest.approx(base, rel=0.05, abs=1e-3)


def test_record_levels_ends_with_the_forward_flow() -> None:
    torch.manual_seed(0)
    model = SpyNet()
    ref, supp = torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 64)
    with record_levels(model) as levels:
        out = model(ref, supp)
    assert [tuple(f.shape[-2:]) for f in levels] == [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    assert torch.equal(levels[-1], out)
    model(ref, supp)
    assert len(levels) == 6  # hooks removed


def test_fresh_model_starts_at_zero_flow_and_loss_decreases() -> None:
    torch.manual_seed(0)
    model = make_spynet(FlowTrainConfig(seed=0))
    data = FlowPairs([], (32, 32), key=(11,), max_motion=3.0)
    batch = [data.pair(i) for i in range(2)]
    ref, supp, flow = (torch.stack([p[k] for p in batch]) for k in range(3))
    zero_epe = flow.norm(dim=1).mean().item()
    assert evaluate_epe(model, batch) == pytest.approx(zero_epe, rel=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    with record_levels(model) as levels:
        for _ in range(15):
            levels.clear()
            model(ref, supp)
            loss, _ = flow_loss(levels, flow)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert max(losses[-3:]) < 0.7 * losses[0]
    assert evaluate_epe(model, batch) < 0.6 * zero_epe


def test_train_saves_loadable_spynet_and_logs_validation(tmp_path: Path) -> None:
    path = train_flow(tiny(tmp_path / "run"), log=lambda *a: None)
    assert path == tmp_path / "run" / "model.safetensors"
    model = vsrx.load_model(path)
    assert isinstance(model, SpyNet)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if "loss" in e] == [1, 2, 3, 4]
    val = [e["val"] for e in lines if "val" in e]
    assert len(val) == 1 and val[0]["zero_epe"] > 0 and val[0]["epe"] > 0
    pairs = validation_pairs(2, (32, 40), 3.0)
    assert evaluate_epe(model, pairs) == pytest.approx(val[0]["epe"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["patch"] == 32


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train_flow(tiny(full, val_pairs=0), log=lambda *a: None)  # checkpoints at steps 2 and 4
    part = tmp_path / "part"
    (part / "ckpt").mkdir(parents=True)
    shutil.copytree(full / "ckpt" / "step_00000002", part / "ckpt" / "step_00000002")
    train_flow(tiny(part, val_pairs=0), resume=True, log=lambda *a: None)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


def test_patch_must_be_a_multiple_of_32(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="multiple of 32"):
        train_flow(tiny(tmp_path, patch=48), log=lambda *a: None)


@pytest.mark.slow
def test_cli_task_flow_trains_spynet_and_rejects_sr_flags(tmp_path):
    result = cli("train", "--task", "flow", "--iters", "2", "--batch", "2", "--patch", "32", "--val-every", "100",
                 "--out", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert isinstance(vsrx.load_model(tmp_path / "run" / "model.safetensors"), SpyNet)
    result = cli("train", "--task", "flow", "--offset-fidelity", "1")
    assert result.exit_code == 2 and "does not use --offset-fidelity" in result.output
