"""The `vsrx` command line: parse flags, call the library, print. No logic lives here."""

from __future__ import annotations

import sys
import traceback

import click
from rich.console import Console

import vsrx
from vsrx.errors import UsageError, VsrxError

err_console = Console(stderr=True, highlight=False, log_path=False)


class VsrxGroup(click.Group):
    """A click group that turns library errors into one line and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VsrxError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            err_console.print(f"[bold red]vsrx: error:[/] {e}", markup=True, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("vsrx: interrupted; nothing was written at the output path")
            sys.exit(130)


@click.group(cls=VsrxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vsrx.__version__, prog_name="vsrx")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Video super-resolution x4 with EDVR models and deformable alignment (dcn, decomp-N, flow)."""
    ctx.obj = {"debug": debug}


def not_yet(command: str) -> None:
    raise UsageError(f"`vsrx {command}` is not implemented in this version yet")


@main.command()
@click.argument("src")
@click.argument("dst")
def upscale(src: str, dst: str) -> None:
    """Upscale a video file or frame folder SRC by 4x into DST."""
    not_yet("upscale")


@main.command()
@click.option("--dataset", type=click.Choice(["reds", "vimeo90k", "videos", "synthetic"]), default="synthetic", show_default=True, help="Training data layout.")
@click.option("--root", type=click.Path(), help="Dataset root (synthetic: optional folder of videos/frames used as stills).")
@click.option("--synthetic-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of samples rendered with synthetic motion (exact flow) from still frames of the data.")
@click.option("--exclude", multiple=True, help="Clip or file names to leave out (repeatable), e.g. held-out clips.")
@click.option("--out", default="runs/vsrx", show_default=True, help="Run directory: checkpoints, metrics, final weights.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
@click.option("--preset", type=click.Choice(["edvr-s", "edvr-m", "edvr-l"]), default="edvr-m", show_default=True)
@click.option("--align", type=click.Choice(["dcn", "decomp", "flow"]), default="dcn", show_default=True)
@click.option("--offsets", type=click.IntRange(1), help="Offsets N per group (decomp; 9 for dcn, 1 for flow).")
@click.option("--groups", type=click.IntRange(1), help="Deformable groups G (default: the preset's).")
@click.option("--frames", type=click.IntRange(1), default=7, show_default=True, help="Window length T (odd).")
@click.option("--tsa/--no-tsa", "with_tsa", default=None, help="TSA fusion (default: the preset's).")
@click.option("--init-from", type=click.Path(), help="Start from these weights (non-strict for a new fusion module).")
@click.option("--freeze-except", help="Train only parameters with this name prefix (e.g. fusion) ...")
@click.option("--freeze-iters", type=click.IntRange(0), default=0, show_default=True, help="... for this many first iterations.")
@click.option("--iters", type=click.IntRange(1), default=600_000, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=32, show_default=True, help="Global batch size.")
@click.option("--patch", type=click.IntRange(8), default=64, show_default=True, help="LR patch size.")
@click.option("--lr", type=float, default=4e-4, show_default=True, help="Peak learning rate (Adam, betas 0.9/0.99).")
@click.option("--restarts", type=click.IntRange(1), default=4, show_default=True, help="Cosine annealing periods.")
@click.option("--eta-min", type=float, default=1e-7, show_default=True)
@click.option("--grad-clip", type=float, help="Clip the gradient norm to this value.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True, help="auto: fp16 AMP on CUDA, fp32 on CPU.")
@click.option("--offset-fidelity", type=float, default=0.0, show_default=True, help="Offset-fidelity loss weight lambda (0: off).")
@click.option("--fidelity-threshold", type=float, default=10.0, show_default=True, help="Threshold t in pixels.")
@click.option("--flow", type=click.Choice(["auto", "gt", "spynet"]), default="auto", show_default=True, help="Flow for the fidelity loss: synthetic ground truth or SPyNet.")
@click.option("--spynet", type=click.Path(), help="SPyNet weights (default: the bundled ones).")
@click.option("--dcn-impl", type=click.Choice(["auto", "torchvision", "decomp"]), default="auto", show_default=True, help="How dcn trains: auto uses the exact decomp-9 form on CPU, where it is faster.")
@click.option("--val", multiple=True, type=click.Path(exists=True), help="Held-out video or frame folder to validate on (repeatable).")
@click.option("--val-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--val-frames", type=click.IntRange(1), default=30, show_default=True, help="Frames per validation clip.")
@click.option("--log-every", type=click.IntRange(1), default=50, show_default=True)
@click.option("--save-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Data-loading processes (default: 0 on CPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank).")
def train(resume: bool, **options) -> None:
    """Train an EDVR model (the paper's recipe by default), resumable, DDP under torchrun."""
    from vsrx.train.trainer import TrainConfig, train as run_training

    options["exclude"] = tuple(options["exclude"])
    options["val"] = tuple(options["val"])
    if options["frames"] % 2 == 0:
        raise UsageError(f"--frames must be odd, got {options['frames']}")
    cfg = TrainConfig(**options)
    path = run_training(cfg, resume=resume, log=lambda msg: err_console.log(msg, highlight=False))
    click.echo(f"weights: {path}")


@main.command(name="eval")
def eval_() -> None:
    """Evaluate models on REDS4, Vid4, Vimeo-90K-T or your own frames."""
    not_yet("eval")


@main.command(name="viz-offsets")
def viz_offsets() -> None:
    """Visualise the offsets a model's aligners learned."""
    not_yet("viz-offsets")


@main.command()
def models() -> None:
    """List the pretrained model zoo."""
    not_yet("models")


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--arch", type=click.Choice(["edvr", "spynet"]), help="Architecture, when the keys do not tell.")
@click.option("--frames", "num_frame", type=int, help="Expected window length (checked against the checkpoint).")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def convert(src: str, dst: str, arch: str | None, num_frame: int | None, overwrite: bool) -> None:
    """Convert a BasicSR EDVR or SPyNet checkpoint (.pth) into a vsrx .safetensors file."""
    from pathlib import Path

    from vsrx.models.weights import convert_checkpoint

    if Path(dst).exists() and not overwrite:
        raise UsageError(f"{dst} exists; pass --overwrite to replace it")
    model, path = convert_checkpoint(src, dst, arch, num_frame)
    params = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    what = f"EDVR {config.mode_name}, {config.num_feat} features, {config.num_frame} frames, G={config.groups}, TSA {'on' if config.with_tsa else 'off'}" if config else type(model).__name__
    click.echo(f"wrote {path} ({what}, {params:,} parameters)")


if __name__ == "__main__":
    main()
