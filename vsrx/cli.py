"""The `vsrx` command line: parse flags, call the library, print. No logic lives here."""

from __future__ import annotations

import sys
import traceback

import click
from rich.console import Console

import vsrx
from vsrx.errors import UsageError, VsrxError

err_console = Console(stderr=True, highlight=False)


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
def train() -> None:
    """Train a model."""
    not_yet("train")


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
