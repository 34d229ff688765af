"""The fused Triton kernel for Eq. 3 (`vsrx.ops.fused`) against the float64 `Aligner.decomposed`.

On CPU the kernel runs in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1)
before triton is first imported, so those cases run in one child process: the parent builds
the inputs, the child runs `fused_decomp` on them, the parent compares with the float64
reference. The CUDA tests run in-process and are skipped without a GPU.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import ROOT, child_env

from vsrx.models.align import Aligner
from vsrx.models.config import Alignment
from vsrx.ops.fused import available, fused_decomp, interpreting, pack_weight

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to max |ref|

# (name, B, C, G, N, H, W, O, dtype, masked, offset scale, special)
CASES = [
    ("n3", 1, 8, 2, 3, 6, 6, 5, torch.float32, True, 4.0, None),
    ("n9", 1, 8, 2, 9, 6, 6, 5, torch.float32, True, 4.0, None),
    ("n9-nomask", 1, 8, 2, 9, 6, 6, 5, torch.float32, False, 4.0, None),
    ("flow", 1, 8, 1, 1, 6, 6, 5, torch.float32, False, 3.0, None),
    ("n5-strided", 2, 8, 2, 5, 5, 7, 5, torch.float32, True, 4.0, "strided"),  # offset slice, channels_last x
    ("n9-integer", 1, 8, 2, 9, 6, 6, 5, torch.float32, True, 4.0, "integer"),  # on-grid and edge samples
    ("n3-far", 1, 8, 2, 3, 6, 6, 5, torch.float32, True, 4.0, "far"),  # +-1e6 offsets: clamped, zero
    ("n4-o20-cg3", 1, 12, 4, 4, 6, 6, 20, torch.float32, True, 4.0, None),  # Cg=3 padded, 2 output tiles
    ("n9-fp16", 1, 8, 2, 9, 6, 6, 5, torch.float16, True, 4.0, None),
    ("n9-bf16", 1, 8, 2, 9, 6, 6, 5, torch.bfloat16, True, 4.0, None),
]

_CHILD = r"""
import os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
import torch
try:
    import triton, triton.language as tl

    @triton.jit
    def _probe(x_ptr, BLOCK: tl.constexpr):
        r = tl.arange(0, BLOCK)
        tl.store(x_ptr + r, tl.load(x_ptr + r) + 1.0)

    t = torch.zeros(16)
    _probe[(1,)](t, BLOCK=16)
    assert bool((t == 1).all())
except Exception as exc:  # the interpreter cannot run here: the parent skips
    print(f"interpreter unavailable: {exc!r}")
    sys.exit(3)
from vsrx.ops.fused import available, fused_decomp, interpreting
cases = torch.load(sys.argv[1])
out = {"interpreting": interpreting()}
for name, args in cases.items():
    block_p = args.pop("block_p", None)
    out[name] = (available(args["x"]), fused_decomp(**args, block_p=block_p))
torch.save(out, sys.argv[2])
"""


def _reference(aligner: Aligner, x, offset, mask):
    with torch.no_grad():
        return aligner.double().decomposed(
            x.double(), offset.double(), None if mask is None else mask.double()
        )


def _make_case(b, c, g, n, h, w, o, dtype, masked, scale, special, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    aligner = Aligner(c, o, 4, Alignment("flow" if (g, n) == (1, 1) else "decomp", offsets=n, groups=g))
    with torch.no_grad():
        aligner.weight.copy_(torch.rand(aligner.weight.shape, generator=gen) - 0.5)
        aligner.bias.copy_(torch.rand(o, generator=gen) - 0.5)
    x = torch.randn(b, c, h, w, generator=gen).to(dtype)
    conv_out = torch.randn(b, 3 * g * n, h, w, generator=gen) * scale  # like conv_offset's output
    if special == "integer":
        conv_out = conv_out.round()
    if special == "far":
        conv_out[:, 0 : 2 * g * n : 4] = 1e6
        conv_out[:, 1 : 2 * g * n : 4] = -1e6
    offset = conv_out[:, : 2 * g * n]  # a channel slice: strided like Aligner.forward's
    if special != "strided":
        offset = offset.contiguous()
    else:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = torch.sigmoid(conv_out[:, 2 * g * n :]) if masked else None
    args = dict(x=x, offset=offset, mask=mask, weight=aligner.weight.detach().clone(),
                bias=aligner.bias.detach().clone(), grid=aligner.grid.clone(), groups=g, offsets=n)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    return aligner, args


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    tmp = tmp_path_factory.mktemp("fused")
    cases, refs = {}, {}
    for name, *spec in CASES:
        aligner, args = _make_case(*spec)
        refs[name] = (_reference(aligner, args["x"], args["offset"], args["mask"]), spec[7])
        if name == "n9":
            args["block_p"] = 16  # several pixel tiles with a ragged last one (36 pixels)
        cases[name] = args
    torch.save(cases, tmp / "cases.pt")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / "cases.pt"), str(tmp / "out.pt")],
                          env=child_env(TRITON_INTERPRET="1"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(tmp / "out.pt"), refs, cases


@pytest.mark.slow
@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_interpreter_matches_float64_reference(interpreted, name):
    out, refs, cases = interpreted
    assert out["interpreting"]
    was_available, y = out[name]
    ref, dtype = refs[name]
    assert was_available
    assert y.dtype == dtype and y.shape == ref.shape
    if name == "n5-strided":
        assert y.is_contiguous(memory_format=torch.channels_last)
    scale = ref.abs().max().item()
    torch.testing.assert_close(y.double(), ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def test_pack_weight_layout():
    o, g, cg, n = 3, 2, 4, 5
    w = torch.randn(o, g * cg * n, 1, 1)
    packed = pack_weight(w, g, n, torch.float32)
    assert packed.shape == (g * n, o, cg)
    for gi in range(g):
        for ni in range(n):
            for ci in range(cg):
                c = gi * cg + ci
                assert torch.equal(packed[gi * n + ni, :, ci], w[:, c * n + ni, 0, 0])


@pytest.mark.skipif(interpreting(), reason="the interpreter runs anywhere")
def test_aligner_picks_one_implementation_per_call(monkeypatch):
    """dcn: torchvision's kernel; decomp/flow: the fused kernel for CUDA inference where it is
    available, else Eq. 3 (both in float32 for half inputs); checked without a GPU."""
    import vsrx.ops.fused as fused_module

    class OnCuda:  # all the dispatch reads of x
        is_cuda = True

    decomp = Aligner(8, 8, 4, Alignment("decomp", offsets=5, groups=2))
    dcn = Aligner(8, 8, 4, Alignment("dcn", groups=2))
    monkeypatch.setattr(fused_module, "available", lambda x: True)
    with torch.no_grad():
        assert decomp.implementation(OnCuda()) == decomp.fused
        assert decomp.implementation(torch.zeros(1)).__wrapped__ == decomp.decomposed  # a CPU tensor
        assert dcn.implementation(OnCuda()).__wrapped__ == dcn.deform_conv
    assert decomp.implementation(OnCuda()).__wrapped__ == decomp.decomposed  # training: autograd
    monkeypatch.setattr(fused_module, "available", lambda x: False)
    with torch.no_grad():
        assert decomp.implementation(OnCuda()).__wrapped__ == decomp.decomposed


def test_not_available_on_cpu_without_interpreter():
    x = torch.zeros(1, 8, 4, 4)
    assert not available(x)
    with pytest.raises(RuntimeError):
        fused_decomp(x, torch.zeros(1, 12, 4, 4), None, torch.zeros(5, 24, 1, 1), None,
                     torch.zeros(3, 2), 2, 3)


def test_available_rejects_unsupported_inputs():
    assert not available(torch.zeros(8, 4, 4))
    assert not available(torch.zeros(1, 8, 4, 4, dtype=torch.float64))


cuda = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("dtype,layout", [(torch.float16, "nchw"), (torch.float16, "cl"),
                                          (torch.bfloat16, "nchw"), (torch.float32, "nchw")])
def test_cuda_realistic_size(dtype, layout):
    """64 channels, 180x320, G=8, N=5 against float64 on the GPU (inputs pre-rounded to dtype)."""
    pytest.importorskip("triton")
    aligner, args = _make_case(1, 64, 8, 5, 180, 320, 64, dtype, True, 3.0,
                               "strided" if layout == "cl" else None, device="cuda")
    aligner = aligner.cuda()
    assert available(args["x"])
    ref = _reference(aligner, args["x"], args["offset"], args["mask"])
    y = fused_decomp(**args)
    assert y.dtype == dtype
    scale = ref.abs().max().item()
    torch.testing.assert_close(y.double(), ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@cuda
def test_cuda_matches_unfused_aligner_forward():
    """The kernel on the (strided) offsets and masks that Aligner.forward computes, float32."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    aligner = Aligner(64, 64, 64, Alignment("decomp", offsets=9, groups=8)).cuda().eval()
    with torch.no_grad():
        aligner.conv_offset.weight.normal_(0, 0.05)
        x = torch.randn(2, 64, 40, 56, device="cuda")
        feat = torch.randn(2, 64, 40, 56, device="cuda")
        out = aligner.conv_offset(feat)
        offset, mask = out[:, : 2 * 8 * 9], torch.sigmoid(out[:, 2 * 8 * 9 :])
        y = fused_decomp(x, offset, mask, aligner.weight, aligner.bias, aligner.grid, 8, 9)
    ref = _reference(aligner, x, offset, mask)  # float64 (the float32 conv may use TF32)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_benchmark_runs_on_cpu(capsys):
    """benchmarks/bench_fused.py at a tiny size: the unfused and torchvision paths agree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_fused", ROOT / "benchmarks" / "bench_fused.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--device", "cpu", "--size", "6x8", "--batch", "1", "--channels", "8", "--groups", "2",
                       "--offsets", "3,9", "--dtypes", "fp32", "--reps", "1", "--warmup", "0"])
    methods = {(r["N"], r["method"]): r for r in rows}
    assert {(3, "unfused"), (9, "unfused"), (9, "torchvision")} <= set(methods)
    assert methods[(9, "torchvision")]["rel_err"] < 1e-5
    assert "stacked" in capsys.readouterr().out


@pytest.mark.skipif(interpreting(), reason="compiles the JIT kernel, not the interpreted one")
@pytest.mark.parametrize("dtype,arch", [("fp16", 90), ("fp32", 80)])
def test_kernel_compiles_for_cuda_without_a_gpu(dtype, arch):
    """Ahead-of-time compilation to a cubin (sm_80/sm_90): catches GPU-only lowering errors here."""
    triton = pytest.importorskip("triton")
    from vsrx.ops import fused

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.compiler.errors import CompilationError
    except ImportError as exc:  # pragma: no cover - other triton versions
        pytest.skip(f"triton compiler API: {exc}")
    kernel = fused._decomp_kernel
    ptr = "*" + dtype
    sig = {name: "i32" for name in kernel.arg_names}
    sig.update(x_ptr=ptr, off_ptr="*fp32", mask_ptr="*fp32", w_ptr=ptr, bias_ptr="*fp32", grid_ptr="*fp32",
               y_ptr=ptr)
    const = dict(HAS_MASK=True, HAS_BIAS=True, BLOCK_P=64, BLOCK_O=64, BLOCK_C=16,
                 DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32",
                 sxw=1, syw=1, sow=1, smw=1)  # unit strides are specialised at run time too
    sig.update({name: "constexpr" for name in const})
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const),
                                  target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    except CompilationError:
        raise
    except Exception as exc:  # no ptxas, or a toolchain that cannot target this arch here
        pytest.skip(f"cannot compile for sm_{arch} here: {type(exc).__name__}: {str(exc)[:200]}")
    assert "mma" in compiled.asm["ptx"]  # the mixing product runs on tensor cores
