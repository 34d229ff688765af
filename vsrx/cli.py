"""The `vsrx` command line: parse flags, call the library, print. No logic lives here."""

from __future__ import annotations

import sys

import click

import vsrx
from vsrx.device import PRECISIONS
from vsrx.errors import UsageError, VsrxError
from vsrx.io.windows import PADDINGS
from vsrx.models.config import ALIGN_MODES, PRESETS


class LazyConsole:
    """rich's stderr console, made on first use: `vsrx --help` and `--version` need not import rich."""

    def __init__(self, **options) -> None:
        self.options, self.real = options, None

    def get(self):
        """The rich Console itself, for rich objects that take one."""
        if self.real is None:
            from rich.console import Console

            self.real = Console(**self.options)
        return self.real

    def __getattr__(self, name: str):
        return getattr(self.get(), name)


err_console = LazyConsole(stderr=True, highlight=False, log_path=False)
SELF_ENSEMBLE_HELP = ("Run every window in all 8 rotations/reflections and average the outputs: "
                      "8x the time for a small PSNR gain (BENCHMARKS.md).")


class VsrxGroup(click.Group):
    """A click group that turns library errors into one line and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VsrxError as e:
            if ctx.obj and ctx.obj.get("debug"):
                import traceback

                traceback.print_exc()
            from rich.markup import escape

            err_console.print(f"[bold red]vsrx: error:[/] {escape(str(e))}", markup=True, soft_wrap=True)
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
    from vsrx.runtime import keep_freed_memory

    keep_freed_memory()  # large freed blocks stay in the heap: no page faults per window (vsrx/runtime.py)
    ctx.obj = {"debug": debug}


class FrameProgress:
    """A rich progress bar (frames done/total, fps, ETA) that appears with the first frame; frames
    resumed from an earlier run count as done but not towards the fps."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.bar = self.task = None

    def __enter__(self) -> "FrameProgress":
        return self

    def __call__(self, done: int, total: int, resumed: int = 0) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if self.bar is None:
            label = f"{self.label} ({resumed} resumed)" if resumed else self.label
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                                TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=err_console.get())
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=resumed, fps=0.0)
        elapsed = self.bar.tasks[0].elapsed or 1e-9
        self.bar.update(self.task, completed=done, total=total, fps=(done - resumed) / elapsed)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def restart(self, label: str) -> "FrameProgress":
        """End the current bar; the next call starts a new one with this label (the next file)."""
        self.__exit__()
        self.label = label
        return self


def parse_encoder_options(values: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"-e expects key=value, got {item!r}")
        options[key] = value
    return options


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="SRC... [DST]")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Upscale every SRC into DIR/<name> (many files, one model load).")
@click.option("--ext", help="With --out-dir: write every output in this container (mp4, mkv, mov, webm, avi); default: each source's own.")
@click.option("--dry-run", is_flag=True, help="Print each source's frames, output size and estimated time (from a short timed run here); write nothing.")
@click.option("--resume", is_flag=True, help="Continue the unfinished job of DST where it stopped (starts afresh when there is none).")
@click.option("--scene-cuts", type=click.Choice(["auto", "off"]), default="auto", show_default=True, help="auto: detect hard cuts and keep every window inside its shot.")
@click.option("--scene-threshold", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="A frame starts a new shot when its luma histograms (2x2 cells, 16 bins) differ from the last frame's by more than this share of pixels.")
@click.option("--segment-frames", type=click.IntRange(1), default=120, show_default=True, help="Frames per resumable segment (rounded up to a multiple of --batch); each is encoded on its own, starting on a keyframe.")
@click.option("--model", help="Zoo name or .safetensors path (default: the bundled default model).")
@click.option("--align", type=click.Choice(ALIGN_MODES), help="Alignment mode (picks the zoo variant; dcn runs as decomp-9 exactly).")
@click.option("--offsets", type=click.IntRange(1), help="Offsets N per group for --align decomp.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help="auto: fp16 on CUDA; bf16 on a CPU with bf16 hardware, AMX or AVX512-BF16 (PSNR-equal to fp32, rare pixels 2 grey levels off); else fp32.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Windows per model call.")
@click.option("--padding", type=click.Choice(PADDINGS), default="reflection_circle", show_default=True, help="How windows at the clip's ends (and at scene cuts) are filled.")
@click.option("--tile", type=click.IntRange(8), help="Process frames in tiles of this many LR pixels (bounded memory for large frames).")
@click.option("--tile-overlap", type=click.IntRange(0), default=32, show_default=True, help="LR pixels of context around each tile.")
@click.option("--self-ensemble", is_flag=True, help=SELF_ENSEMBLE_HELP)
@click.option("--start", type=click.IntRange(0), default=0, show_default=True, help="First frame to upscale (0-based).")
@click.option("--end", type=click.IntRange(1), help="Frame after the last to upscale (default: all).")
@click.option("--frames", "as_frames", is_flag=True, help="Write a folder of PNG frames even if DST has a video extension.")
@click.option("--codec", help="Video encoder (default libx264; VP9 for .webm).")
@click.option("--crf", type=float, default=18, show_default=True)
@click.option("--preset", default="medium", show_default=True, help="Encoder speed preset.")
@click.option("--pix-fmt", help="Output pixel format (default: the source's where the codec allows, else yuv420p).")
@click.option("-e", "--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE", help="Extra encoder option (repeatable).")
@click.option("--no-audio", is_flag=True, help="Do not copy audio streams.")
@click.option("--no-subs", is_flag=True, help="Do not copy subtitle streams.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists (and start an unfinished job of DST afresh).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the summary line (or table).")
def upscale(paths: tuple[str, ...], out_dir: str | None, ext: str | None, dry_run: bool, as_frames: bool,
            encoder_options: tuple[str, ...], no_audio: bool, no_subs: bool, quiet: bool, as_json: bool, **options) -> None:
    """Upscale a video file or frame folder SRC by 4x into DST (a video file, or a folder of PNG frames);
    with --out-dir, every SRC into DIR/<name>."""
    import dataclasses
    import json

    from vsrx.pipeline import Session, UpscaleOptions, upscale_many

    if out_dir is None and len(paths) != 2:
        raise UsageError("give SRC and DST, or SRC... with --out-dir DIR")
    if ext is not None and out_dir is None:
        raise UsageError("--ext goes with --out-dir (for one file, DST's extension picks the container)")
    opts = UpscaleOptions(**options, frames=as_frames, encoder_options=parse_encoder_options(encoder_options),
                          audio=not no_audio, subtitles=not no_subs)
    note = (lambda msg: err_console.print(f"vsrx: {msg}", markup=False, highlight=False, soft_wrap=True)) if not as_json else (lambda msg: None)
    if dry_run:
        if out_dir is None:
            with Session(opts, note) as session:
                estimates = [session.estimate(*paths)]
        else:
            estimates = upscale_many(list(paths), out_dir, opts, ext, note=note, dry_run=True)
        if estimates is not None and estimates[0] is not None:
            print_estimates(estimates, as_json)
            if any(e.status.startswith("failed") for e in estimates):
                sys.exit(1)
        return
    if out_dir is None:
        with FrameProgress("upscaling", enabled=not quiet and not as_json) as progress, Session(opts, note) as session:
            result = session.run(*paths, progress)
        if result is None:  # a non-zero torchrun rank
            return
        for msg in result.notes:
            note(msg)
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(result)))
        elif not quiet:
            click.echo(summary_line(result))
        return
    with FrameProgress("", enabled=not quiet and not as_json) as bar:
        outcomes = upscale_many(list(paths), out_dir, opts, ext, lambda name: bar.restart(f"upscaling {name}"), note)
    if outcomes is None:
        return
    failed = sum(o.status == "failed" for o in outcomes)
    if as_json:
        click.echo(json.dumps({"files": [dataclasses.asdict(o) for o in outcomes], "failed": failed}))
    else:
        print_outcomes(outcomes)
    if failed:
        sys.exit(1)


def summary_line(result) -> str:
    """One line for a finished upscale."""
    size = result.bytes / 1e6
    resumed = f" ({result.resumed} resumed, {result.computed} computed)" if result.resumed else ""
    cuts = f", {len(result.scene_cuts)} scene cut{'s' if len(result.scene_cuts) > 1 else ''}" if result.scene_cuts else ""
    return (f"{result.frames} frames{resumed}{cuts} in {result.seconds:.1f} s ({result.fps:.2f} fps) with {result.model} "
            f"[{result.mode}{' self-ensemble' if result.self_ensemble else ''}, {result.device}, {result.precision}] -> {result.output} ({size:.1f} MB)")


def print_outcomes(outcomes) -> None:
    """The table at the end of a many-files upscale."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vsrx upscale")
    for column in ("source", "status", "frames", "resumed", "seconds", "fps", "output / error"):
        table.add_column(column, justify="right" if column in ("frames", "resumed", "seconds", "fps") else "left")
    for o in outcomes:
        r = o.result
        numbers = [str(r.frames), str(r.resumed), f"{r.seconds:.1f}", f"{r.fps:.2f}"] if r else ["-"] * 4
        table.add_row(o.source, o.status, *numbers, o.error or o.output)
    Console(highlight=False, width=max(Console().width, 120)).print(table)


def print_estimates(estimates, as_json: bool) -> None:
    """What --dry-run found for each source."""
    import dataclasses
    import json

    if as_json:
        click.echo(json.dumps({"dry_run": [dataclasses.asdict(e) for e in estimates]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vsrx upscale --dry-run (nothing written)")
    for column in ("source", "frames", "to compute", "output size", "s/frame", "estimated", "output", "status"):
        table.add_column(column, justify="right" if column in ("frames", "to compute", "s/frame", "estimated") else "left")
    for e in estimates:
        minutes, seconds = divmod(round(e.seconds), 60)
        table.add_row(e.source, str(e.frames), str(e.todo), e.size, f"{e.seconds_per_frame:.3f}",
                      f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}", e.output, e.status)
    Console(highlight=False, width=max(Console().width, 120)).print(table)


@main.command()
@click.option("--dataset", type=click.Choice(["reds", "vimeo90k", "videos", "synthetic"]), default="synthetic", show_default=True, help="Training data layout.")
@click.option("--root", type=click.Path(), help="Dataset root (synthetic: optional folder of videos/frames used as stills).")
@click.option("--synthetic-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of samples rendered with synthetic motion (exact flow) from still frames of the data.")
@click.option("--exclude", multiple=True, help="Clip or file names to leave out (repeatable), e.g. held-out clips.")
@click.option("--frame-cache", type=click.Path(file_okay=False), help="Keep decoded video and frame-folder clips in this folder as .npy files, memory-mapped: runs sharing it decode once and share one copy in memory.")
@click.option("--out", default="runs/vsrx", show_default=True, help="Run directory: checkpoints, metrics, final weights.")
@click.option("--resume", "resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its saved config.json and newest checkpoint; only --iters, --time-limit, --root, --frame-cache, --device, --workers, --log-every, --save-every, --val-every and --keep may be given with it.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="edvr-m", show_default=True)
@click.option("--align", type=click.Choice(ALIGN_MODES), default="dcn", show_default=True)
@click.option("--offsets", type=click.IntRange(1), help="Offsets N per group (decomp; 9 for dcn, 1 for flow).")
@click.option("--groups", type=click.IntRange(1), help="Deformable groups G (default: the preset's).")
@click.option("--frames", type=click.IntRange(1), default=7, show_default=True, help="Window length T (odd).")
@click.option("--tsa/--no-tsa", "with_tsa", default=None, help="TSA fusion (default: the preset's).")
@click.option("--reconstruct-blocks", type=click.IntRange(1), help="Residual blocks in the reconstruction trunk (default: --init-from's, else the preset's); deeper than --init-from's, the new blocks start as identities.")
@click.option("--flow-guided", is_flag=True, help="Offsets start from SPyNet's flow (centre to neighbour) and learn the residual; the model carries the SPyNet of --spynet.")
@click.option("--init-from", type=click.Path(), help="Start from these weights (non-strict for a new fusion module).")
@click.option("--freeze-except", help="Train only parameters with this name prefix (e.g. fusion) ...")
@click.option("--freeze-iters", type=click.IntRange(0), default=0, show_default=True, help="... for this many first iterations.")
@click.option("--iters", type=click.IntRange(1), default=600_000, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=32, show_default=True, help="Global batch size.")
@click.option("--patch", type=click.IntRange(8), default=64, show_default=True, help="LR patch size.")
@click.option("--lr", type=float, default=4e-4, show_default=True, help="Peak learning rate (Adam, betas 0.9/0.99).")
@click.option("--restarts", type=click.IntRange(1), default=4, show_default=True, help="Cosine annealing periods.")
@click.option("--eta-min", type=float, default=1e-7, show_default=True)
@click.option("--warmup", type=click.IntRange(0), help="Linear learning-rate warm-up steps (default: 0; SPyNet 200).")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True, help="Decay of an exponential moving average of the weights, e.g. 0.999 (0: off); the saved weights are the average.")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), help="Seconds of training after which the run saves a checkpoint and its weights and ends.")
@click.option("--grad-clip", type=float, help="Clip the gradient norm to this value.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help="auto: fp16 AMP on CUDA, fp32 on CPU.")
@click.option("--offset-fidelity", type=float, default=0.0, show_default=True, help="Offset-fidelity loss weight lambda (0: off).")
@click.option("--fidelity-threshold", type=float, default=10.0, show_default=True, help="Threshold t in pixels.")
@click.option("--flow", type=click.Choice(["auto", "gt", "spynet"]), default="auto", show_default=True, help="Flow for the fidelity loss: synthetic ground truth or SPyNet.")
@click.option("--spynet", type=click.Path(), help="SPyNet weights for --flow spynet and --flow-guided (default: the bundled ones).")
@click.option("--dcn-impl", type=click.Choice(["auto", "torchvision", "decomp"]), default="auto", show_default=True, help="How dcn trains: auto uses the exact decomp-9 form on CPU, where it is faster.")
@click.option("--val", multiple=True, type=click.Path(exists=True), help="Held-out video or frame folder to validate on (repeatable).")
@click.option("--val-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--val-frames", type=click.IntRange(1), default=30, show_default=True, help="Frames per validation clip.")
@click.option("--log-every", type=click.IntRange(1), default=50, show_default=True)
@click.option("--save-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--keep", type=click.IntRange(1), default=2, show_default=True, help="Checkpoints kept.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Data-loading processes (default: 0 on CPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank).")
@click.option("--task", type=click.Choice(["sr", "flow"]), default="sr", show_default=True, help="sr: an EDVR model; flow: SPyNet on synthetic motion with exact flow.")
@click.option("--max-motion", type=float, default=8.0, show_default=True, help="flow task: camera speed bound in pixels per frame.")
@click.pass_context
def train(ctx: click.Context, resume: str | None, task: str, **options) -> None:
    """Train an EDVR model (the paper's recipe by default) or SPyNet (--task flow); resumable, DDP under torchrun."""
    from vsrx.train import start_training

    log = lambda msg: err_console.log(msg, highlight=False)  # noqa: E731
    given = {k: tuple(v) if isinstance(v, tuple) else v for k, v in options.items()
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    click.echo(f"weights: {start_training(task, given, resume, log)}")


@main.command(name="eval")
@click.option("--dataset", type=click.Choice(["reds4", "vid4", "vimeo90k-t", "frames", "video"]), required=True, help="Benchmark layout.")
@click.option("--root", multiple=True, required=True, type=click.Path(), help="Dataset root (GT folder for frames; video files for video, repeatable).")
@click.option("--lr", "lr_root", type=click.Path(), help="Stored LR frames (default: MATLAB-bicubic x1/4 of the GT, rounded to 8 bits).")
@click.option("--model", "models", multiple=True, help="Zoo name or .safetensors path (repeatable; default: the bundled default model).")
@click.option("--align", "aligns", multiple=True, type=click.Choice(ALIGN_MODES), help="Alignment modes to run each model in (repeatable).")
@click.option("--offsets", "offsets_list", multiple=True, type=click.IntRange(1), help="Offsets N for decomp (repeatable).")
@click.option("--bicubic-only", is_flag=True, help="Score only the bicubic baseline.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--padding", type=click.Choice(PADDINGS), default="reflection_circle", show_default=True)
@click.option("--tile", type=click.IntRange(8), help="Tile size in LR pixels for large frames.")
@click.option("--self-ensemble", is_flag=True, help=SELF_ENSEMBLE_HELP)
@click.option("--crop-border", type=click.IntRange(0), default=0, show_default=True, help="Pixels cropped from each border before scoring.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write all results (per frame too) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write per-frame results as CSV.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="Write the SR frames as PNG under this folder.")
def eval_(dataset: str, root: tuple[str, ...], lr_root: str | None, models: tuple[str, ...], aligns: tuple[str, ...],
          offsets_list: tuple[int, ...], bicubic_only: bool, device: str, precision: str, batch: int, padding: str,
          tile: int | None, self_ensemble: bool, crop_border: int, json_path: str | None, csv_path: str | None, save_dir: str | None) -> None:
    """Score models against bicubic on REDS4, Vid4, Vimeo-90K-T, a frame folder or videos (x4, the field's protocol)."""
    from pathlib import Path

    from rich.console import Console

    from vsrx.evaluate.datasets import open_dataset
    from vsrx.evaluate.runner import evaluate, model_rows, render_table, write_csv, write_json

    data = open_dataset(dataset, [Path(r) for r in root], Path(lr_root) if lr_root else None)
    rows = [] if bicubic_only else model_rows(models, aligns, offsets_list, device, precision, batch, padding, tile, self_ensemble)
    with err_console.status("evaluating") as status:
        result = evaluate(data, rows, crop_border, save_dir, progress=lambda clip: status.update(f"evaluating {clip.name}"))
    Console(highlight=False, width=max(Console().width, 120)).print(render_table(result))
    if json_path:
        write_json(result, json_path)
    if csv_path:
        write_csv(result, csv_path)


@main.command(name="viz-offsets")
@click.argument("clip", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs, CSVs, summary.json and index.html.")
@click.option("--model", help="Zoo name or .safetensors path (default: the bundled default model).")
@click.option("--align", type=click.Choice(ALIGN_MODES), help="Alignment mode (as in upscale).")
@click.option("--offsets", type=click.IntRange(1), help="Offsets N per group for --align decomp.")
@click.option("--frame", type=click.IntRange(0), help="Centre frame of the window to analyse (0-based; default: the middle frame).")
@click.option("--neighbor", "neighbors", multiple=True, type=int, metavar="J", help="Neighbour relative to the centre, e.g. -1 or 2 (repeatable; default: all).")
@click.option("--level", "levels", multiple=True, type=click.Choice(["l1", "l2", "l3", "cascade"]), help="Aligner to show (repeatable; default: l1 and cascade).")
@click.option("--flow", type=click.Choice(["auto", "spynet", "none"]), default="auto", show_default=True, help="Optical-flow reference; auto: SPyNet when weights are available, else none.")
@click.option("--spynet", type=click.Path(), help="SPyNet weights for the flow reference (default: the bundled ones).")
@click.option("--groups-mean", is_flag=True, help="Show each offset's mean over the deformable groups instead of every group.")
@click.option("--features", type=click.Choice(["pca", "mean"]), default="pca", show_default=True, help="Feature maps as a PCA to RGB or the channel mean.")
@click.option("--padding", type=click.Choice(PADDINGS), default="reflection_circle", show_default=True, help="How windows at the clip's ends are filled.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def viz_offsets(clip: str, out: str, neighbors: tuple[int, ...], levels: tuple[str, ...], **options) -> None:
    """Visualise what a model's alignment learned on one window of CLIP (a video file or frame folder)."""
    from vsrx.viz.report import VizOptions, viz_offsets as run_viz

    opts = VizOptions(neighbors=neighbors, levels=levels, **options)
    result = run_viz(clip, out, opts, note=lambda msg: err_console.print(f"vsrx: {msg}", highlight=False, soft_wrap=True))
    s = result.summary
    click.echo(f"frame {s['frame']} (window {s['window']}), {s['mode']} G={s['groups']} N={s['offsets']}, flow: {s['flow']}")
    num = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731 (non-finite values are None in the summary)
    for r in s["results"]:
        parts = [f"{r['level']:>7} {r['neighbour']:+d} (frame {r['frame']}): mean |offset| {num(r['mean_abs_offset'])} px",
                 f"diversity {num(r['diversity'])} px"]
        if r["within_1px"] is not None:
            parts.append(f"within 1 px of flow {100 * r['within_1px']:.1f}%")
        if r["mask"]:
            parts.append(f"mask mean {r['mask']['mean']:.3f}")
        if r["overflow"]:
            parts.append("OFFSET OVERFLOW")
        click.echo(", ".join(parts))
    click.echo(f"{len(result.files)} files in {result.out}; open {result.html}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def models(as_json: bool) -> None:
    """List the pretrained model zoo: mode, offsets, parameters, quality against bicubic, file present."""
    import json

    from rich.console import Console
    from rich.table import Table

    from vsrx.models import zoo

    listing = zoo.manifest()
    if as_json:
        click.echo(json.dumps(listing.to_json(), indent=2))
        return
    if not listing.models:
        click.echo(f"no pretrained models are bundled ({zoo.WEIGHTS_DIR / 'manifest.json'} is missing)")
        return
    table = Table(title=f"vsrx model zoo ({zoo.WEIGHTS_DIR})")
    for column in ("name", "mode", "N", "G", "frames", "params", "DAVIS Y gain", "Vimeo Y gain", "bikes Y gain", "file"):
        table.add_column(column, justify="left" if column in ("name", "mode", "file") else "right")
    for name, m in listing.models.items():
        a = m.alignment
        gains = [m.psnr_gain(key) for key in ("davis", "vimeo90k_00002", "bikes")]
        table.add_row(name + (" (default)" if name == listing.default else ""), a.name if a else m.arch,
                      str(a.offsets) if a else "-", str(a.groups) if a and a.groups else "-", str(m.frames or "-"),
                      f"{m.params:,}", *("-" if g is None else f"{g:+.2f} dB" for g in gains),
                      "present" if m.present else "MISSING")
    Console(highlight=False, width=max(Console().width, 120)).print(table)


def csv_list(kind):
    def parse(ctx, param, value):
        try:
            return [kind(v) for v in value.split(",") if v]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None

    return parse


@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="edvr-s", show_default=True)
@click.option("--modes", default="dcn,decomp-5,decomp-9,flow", show_default=True, callback=csv_list(str), help="Alignment modes (dcn, flow, decomp-N).")
@click.option("--precision", "precisions", default="fp32", show_default=True, callback=csv_list(str), help="Comma list of fp32, fp16, bf16.")
@click.option("--batch", "batches", default="1", show_default=True, callback=csv_list(int), help="Comma list of batch sizes.")
@click.option("--cache", "caches", default="on", show_default=True, callback=csv_list(str), help="Feature cache on, off or on,off.")
@click.option("--size", default="180x320", show_default=True, help="LR frame size HxW (output is 4x).")
@click.option("--frames", type=click.IntRange(1), default=8, show_default=True, help="Frames timed per configuration.")
@click.option("--num-frame", type=click.IntRange(1), default=7, show_default=True, help="Window length T.")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: all cores).")
@click.option("--end-to-end", is_flag=True, help="Also time decode + model + encode of a generated clip.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write machine, command and raw numbers here.")
def bench(preset, modes, precisions, batches, caches, size, frames, num_frame, device, threads, end_to_end, json_path) -> None:
    """Speed and memory per mode, precision and batch, next to each mode's naive reference (same model: per-window features,
    torchvision DCN, fp32, batch 1, default allocator); "max diff" is the largest output difference from it in grey levels."""
    import json

    from rich.console import Console
    from rich.table import Table

    from vsrx.bench import bench as run_bench, cases

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size expects HxW, got {size!r}") from None
    table = Table(title=f"vsrx bench: {preset}, {h}x{w} -> {4 * h}x{4 * w}, T={num_frame}")
    for col in ("run", "mode", "cache", "precision", "batch", "ms/frame", "fps", "x ref", "max diff", "host MB", "GPU MB"):
        table.add_column(col, justify="left" if col in ("run", "mode") else "right", no_wrap=True)

    def report(r):
        table.add_row("e2e" if r["end_to_end"] else "model", r["mode"] + (" (ref)" if r["reference"] else ""),
                      "on" if r["cache"] else "off", r["precision"], str(r["batch"]), f"{r['ms_per_frame']:.1f}",
                      f"{r['fps']:.3f}", f"{r['speedup']:.2f}", str(r.get("max_diff", "-")), f"{r['peak_host_mb']:.0f}",
                      f"{r.get('peak_gpu_mb', 0):.0f}")
        err_console.print(f"{'e2e' if r['end_to_end'] else 'model'} {r['mode']} cache={r['cache']} {r['precision']} "
                          f"batch {r['batch']}: {r['ms_per_frame']:.1f} ms/frame ({r['speedup']:.2f}x reference)")

    result = run_bench(cases(modes, precisions, batches, caches, end_to_end), preset, (h, w), frames, device, num_frame,
                       threads, report)
    result["command"] = " ".join(["vsrx", *sys.argv[1:]])
    Console(highlight=False, width=max(Console().width, 110)).print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)


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


@main.command(name="export")
@click.argument("model")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--align", type=click.Choice(ALIGN_MODES), help="Alignment mode (picks the zoo variant; dcn exports as its exact decomp-9 form).")
@click.option("--offsets", type=click.IntRange(1), help="Offsets N per group for --align decomp.")
@click.option("--opset", type=click.IntRange(16), default=17, show_default=True, help="ONNX opset (GridSample needs 16 or later).")
@click.option("--fp16", is_flag=True, help="Half-precision weights and activations between float32 input and output (aligners sample in float32).")
@click.option("--layout", type=click.Choice(["btchw", "bchw"]), default="btchw", show_default=True,
              help="Input (batch, T, 3, H, W), or (batch, 3T, H, W) with the frames stacked on channels (vs-mlrt).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export(model: str, out: str, align: str | None, offsets: int | None, opset: int, fp16: bool, layout: str, overwrite: bool) -> None:
    """Export MODEL (zoo name or .safetensors) to ONNX: one LR window in [0, 1] -> (batch, 3, 4H, 4W),
    dynamic batch, height and width (multiples of 4), standard ONNX operators only; checked with onnxruntime."""
    from vsrx.export import export_onnx, require_onnx

    require_onnx()
    from vsrx.models import load_model

    r = export_onnx(load_model(model, align, offsets), out, layout=layout, opset=opset, fp16=fp16, overwrite=overwrite)
    click.echo(f"wrote {r.path} ({r.mode}, T={r.num_frame}, layout {r.layout}, opset {r.opset}, {'fp16' if r.fp16 else 'fp32'}, "
               f"{r.bytes / 1e6:.1f} MB); onnxruntime vs PyTorch fp32: largest difference {r.max_diff:.1e}")


if __name__ == "__main__":
    main()
