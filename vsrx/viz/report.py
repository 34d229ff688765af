"""`vsrx viz-offsets`: pictures, tables and a self-contained HTML page of what a model's
deformable (or flow) alignment does on one window of a clip.

Output folder layout (``J`` is the neighbour's position relative to the centre, e.g. ``+1``):

- ``{level}_nbr{J}_offsets.png``   optical flow, then each offset field (or group mean), colour-coded
- ``{level}_nbr{J}_diversity.png`` pixelwise std across the level's offsets, with a colour bar
- ``{level}_nbr{J}_features.png``  centre frame, reference and neighbour features, the warped
  features of each offset, the aligner output
- ``{level}_nbr{J}_distance.png`` / ``.csv``  histogram of |offset - flow| (with flow)
- ``{level}_nbr{J}_mask.png``      modulation-mask mean per |offset - flow| bin (with flow and masks)
- ``fusion.png``, ``wheel.png``, ``summary.json``, ``index.html``
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vsrx.errors import InputError, ModelError, UsageError
from vsrx.io.images import write_png
from vsrx.models.edvr import EDVR
from vsrx.viz import draw
from vsrx.viz.capture import (
    LEVELS,
    WindowCapture,
    capture_window,
    check_model,
    learned_absmean,
    level_flow,
    masks_of,
    offsets_px,
    valid_size,
    warped_per_offset,
)
from vsrx.viz.stats import Analysis, analyse, distance_table

DEFAULT_LEVELS = ("l1", "cascade")
FLOW_CHOICES = ("auto", "spynet", "none")
FEATURE_CHOICES = ("pca", "mean")


@dataclass
class VizOptions:
    """Everything `vsrx viz-offsets` takes besides the clip and the output folder."""

    model: str | None = None
    align: str | None = None
    offsets: int | None = None
    frame: int | None = None
    neighbors: tuple[int, ...] = ()  # relative to the centre; empty: every non-centre slot
    levels: tuple[str, ...] = ()  # empty: l1 and cascade
    flow: str = "auto"
    spynet: str | None = None
    groups_mean: bool = False
    features: str = "pca"
    padding: str = "reflection_circle"
    device: str = "auto"


@dataclass
class VizResult:
    out: str
    html: str
    summary: dict
    files: list[str]
    notes: list[str] = field(default_factory=list)


def nbr_name(j: int) -> str:
    return f"nbr{j:+d}" if j else "nbr0"


def check_choices(levels: tuple[str, ...], features: str, flow: str) -> tuple[str, ...]:
    levels = tuple(dict.fromkeys(levels or DEFAULT_LEVELS))
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise UsageError(f"unknown level {bad[0]!r}; choose from l1, l2, l3, cascade")
    if features not in FEATURE_CHOICES:
        raise UsageError(f"unknown feature display {features!r}; choose pca or mean")
    if flow not in FLOW_CHOICES:
        raise UsageError(f"unknown flow source {flow!r}; choose auto, spynet or none")
    return levels


def neighbours_of(model: EDVR, neighbors: tuple[int, ...]) -> list[int]:
    """Requested neighbours relative to the centre (default: every other window slot), checked."""
    t, c = model.config.num_frame, model.config.center
    allowed = range(-c, t - c)
    if not neighbors:
        return [j for j in allowed if j]
    bad = [j for j in neighbors if j not in allowed]
    if bad:
        raise UsageError(f"--neighbor {bad[0]} is outside the model's {t}-frame window ({allowed[0]}..{allowed[-1]})")
    return sorted(set(neighbors))


def load_spynet(flow: str, spynet: str | None, device: torch.device) -> tuple[torch.nn.Module | None, str]:
    """The SPyNet to compute reference flow with, or None; and what the reference is ('spynet'/'none')."""
    from vsrx.models import load_model, zoo
    from vsrx.models.spynet import FRAME_MIN_SIZE, SpyNet

    if flow == "none":
        if spynet:
            raise UsageError("--spynet is used only with --flow spynet or auto")
        return None, "none"
    source = spynet or ("spynet" if "spynet" in zoo.names() else None)
    if source is None:
        if flow == "auto":
            return None, "none"
        raise ModelError("--flow spynet: no SPyNet weights are bundled; pass --spynet PATH to a SPyNet "
                         ".safetensors (`vsrx convert` makes one from BasicSR's .pth) or use --flow none")
    net = load_model(source, device=device)
    if not isinstance(net, SpyNet):
        raise ModelError(f"--spynet {source}: not a SPyNet model (it holds a {type(net).__name__})")
    net.min_size = FRAME_MIN_SIZE
    return net.float(), "spynet"


@torch.inference_mode()
def spynet_flows(spynet: torch.nn.Module, frames: Tensor, center: int, neighbours: list[int]) -> dict[int, Tensor]:
    """(2, H, W) flow from the centre frame to each neighbour J, (dy, dx) in input pixels (0 for J = 0)."""
    device = next(spynet.parameters()).device
    flows = {}
    for j in neighbours:
        if j == 0:
            flows[j] = torch.zeros(2, *frames.shape[-2:])
            continue
        ref, supp = frames[center : center + 1].to(device), frames[center + j : center + j + 1].to(device)
        flows[j] = spynet.flow_dy_dx(ref, supp)[0].float().cpu()
    return flows


def visualise(model: EDVR, frames: Tensor, out: str | Path, *, neighbours: list[int] | None = None,
              levels: tuple[str, ...] = DEFAULT_LEVELS, flows: dict[int, Tensor] | None = None,
              groups_mean: bool = False, features: str = "pca", meta: dict | None = None) -> dict:
    """Capture one window (T, 3, H, W) in [0, 1] and write every picture, table, summary.json and
    index.html into ``out``; returns the summary. ``flows`` maps neighbour J to its (2, H, W)
    (dy, dx) flow from the centre frame (``ref(p) ≈ nbr(p + flow(p))``); None leaves out the
    flow comparisons."""
    model = check_model(model)
    levels = check_choices(levels, features, "none")
    center = model.config.center
    neighbours = neighbours_of(model, tuple(neighbours or ()))
    if flows is not None:
        missing = [j for j in neighbours if j not in flows]
        if missing:
            raise UsageError(f"no reference flow given for neighbour {missing[0]:+d}")
        bad = [j for j in neighbours if tuple(flows[j].shape) != (2, *frames.shape[-2:])]
        if bad:
            raise InputError(f"flow for neighbour {bad[0]:+d} is {tuple(flows[bad[0]].shape)}, expected (2, {frames.shape[-2]}, {frames.shape[-1]})")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror or e}") from None
    cap = capture_window(model, frames, [center + j for j in neighbours], levels)
    files: list[str] = []

    def save_png(image: np.ndarray, name: str) -> str:
        write_png(out / name, image)
        files.append(name)
        return name

    save_png(draw.colour_wheel(), "wheel.png")
    fusion_file = save_png(fusion_figure(cap, frames, features), "fusion.png")
    results = []
    for level in levels:
        for j in neighbours:
            results.append(level_report(cap, frames, level, j, None if flows is None else flows[j],
                                        groups_mean, features, save_png, out, files, (meta or {}).get("window")))
    summary = {
        **(meta or {}),
        "mode": model.config.mode_name,
        "groups": model.config.groups,
        "offsets": model.config.offsets,
        "num_frame": model.config.num_frame,
        "center_slot": center,
        "size": list(frames.shape[-2:]),
        "levels": list(levels),
        "neighbours": neighbours,
        "groups_mean": groups_mean,
        "features": features,
        "units": "input (LR) pixels; l2 and l3 offsets are multiplied by 2 and 4, the flow is area-averaged to each level",
        "overflow_rule": "offset_absmean (mean |learned offset|, level pixels, kernel position removed) > 50, BasicSR's warning",
        "fusion_file": fusion_file,
        "wheel_file": "wheel.png",
        "results": results,
    }
    summary = _finite(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    files.append("summary.json")
    (out / "index.html").write_text(render_html(summary))
    files.append("index.html")
    summary["_files"] = files
    return summary


def _finite(value):
    """The value with every NaN or infinite float (inside dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def resize_to(image: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (h, w, 3) uint8, area-averaged when smaller."""
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image[None].float(), size=size, mode="area")[0]
    return draw.to_hwc(image.clamp(0, 1).mul(255).round().to(torch.uint8))


def fusion_figure(cap: WindowCapture, frames: Tensor, features: str) -> np.ndarray:
    """Centre frame | PCD-aligned features of every window slot (one projection) | fused features."""
    h, w = cap.size
    aligned = [a[:, :h, :w] for a in cap.aligned]
    tiles = [resize_to(frames[cap.center], (h, w)), *draw.features_to_rgb(aligned, features),
             *draw.features_to_rgb([cap.fused[:, :h, :w]], features)]
    factor = draw.display_factor(h, w)
    return draw.grid([draw.enlarge(t, factor) for t in tiles], columns=len(tiles) if len(tiles) <= 10 else 5)


def level_report(cap: WindowCapture, frames: Tensor, level: str, j: int, flow: Tensor | None, groups_mean: bool,
                 features: str, save_png: Callable[[np.ndarray, str], str], out: Path, files: list[str],
                 window: list[int] | None = None) -> dict:
    """Pictures and numbers of one level for neighbour J; returns its summary record."""
    slot = cap.center + j
    lc = cap.levels[level]
    offsets = offsets_px(cap, level, slot)
    h, w = offsets.shape[-2:]
    flow_l = None if flow is None else level_flow(flow, (h, w))
    a = analyse(offsets, masks_of(cap, level, slot), flow_l, lc.grid, learned_absmean(cap, level, slot), groups_mean)
    stem = f"{level}_{nbr_name(j)}"
    factor = draw.display_factor(h, w)
    record = {"level": level, "neighbour": j, "frame": None if window is None else window[slot], "scale": lc.scale,
              **a.stats, "files": {}}
    fields = a.fields if flow_l is None else torch.cat([flow_l[None], a.fields])
    tiles, peak = draw.flow_tiles(fields)
    record["saturation_px"] = peak
    record["files"]["offsets"] = save_png(
        draw.grid([draw.enlarge(t, factor) for t in tiles], columns=math.ceil(math.sqrt(len(tiles))), background=draw.GREY),
        f"{stem}_offsets.png")
    dmap = a.diversity_map.numpy()
    lo, hi = float(dmap.min()), float(dmap.max())
    if hi - lo <= 1e-6 * max(hi, 1.0):  # flat: show it against zero
        lo, hi = 0.0, hi if hi > 0 else 1.0
    record["files"]["diversity"] = save_png(draw.heatmap(dmap, lo, hi, factor), f"{stem}_diversity.png")
    record["diversity_max"] = float(dmap.max()) if dmap.size else 0.0
    record["files"]["features"] = save_png(features_figure(cap, frames, level, slot, a, features, factor), f"{stem}_features.png")
    record["feature_order"] = a.offset_order
    if a.distances is not None:
        rows = distance_table(a)
        edges = np.array([r["lo"] for r in rows] + [rows[-1]["hi"]])
        fractions = np.array([r["fraction"] for r in rows])
        record["files"]["distance"] = save_png(draw.histogram_plot(edges, fractions), f"{stem}_distance.png")
        with open(out / f"{stem}_distance.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["distance_lo_px", "distance_hi_px", "count", "fraction", "mask_mean"])
            for r in rows:
                writer.writerow([r["lo"], "inf" if math.isinf(r["hi"]) else r["hi"], r["count"], f"{r['fraction']:.6g}",
                                 "" if r["mask_mean"] is None else f"{r['mask_mean']:.6g}"])
        files.append(f"{stem}_distance.csv")
        record["files"]["distance_csv"] = f"{stem}_distance.csv"
        if a.masks is not None:
            width = edges[1] - edges[0]
            centres = np.array([(r["lo"] + (r["hi"] if math.isfinite(r["hi"]) else r["lo"] + width)) / 2 for r in rows])
            means = np.array([math.nan if r["mask_mean"] is None else r["mask_mean"] for r in rows])
            record["files"]["mask"] = save_png(
                draw.line_plot(centres, means, (0.0, float(edges[-2] + width))), f"{stem}_mask.png")
    return record


def features_figure(cap: WindowCapture, frames: Tensor, level: str, slot: int, a: Analysis, features: str,
                    factor: int) -> np.ndarray:
    """Centre frame | reference features | neighbour features | warped by each offset n | aligner output."""
    lc = cap.levels[level]
    h, w = valid_size(cap.size, lc.scale)
    ref = lc.inputs[cap.row(cap.center)][:, :h, :w]
    nbr = lc.inputs[cap.row(slot)][:, :h, :w]
    warped = warped_per_offset(cap, level, slot)
    shared = draw.features_to_rgb([ref, nbr, *(warped[n] for n in a.offset_order)], features)
    output = draw.features_to_rgb([lc.outputs[cap.row(slot)][:, :h, :w]], features)
    tiles = [resize_to(frames[cap.center], (h, w)), *shared, *output]
    columns = len(tiles) if len(tiles) <= 8 else math.ceil(math.sqrt(len(tiles)))
    return draw.grid([draw.enlarge(t, factor) for t in tiles], columns=columns)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _px(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g} px"


LEVEL_TEXT = {
    "l3": "PCD level 3 (1/4 resolution)",
    "l2": "PCD level 2 (1/2 resolution)",
    "l1": "PCD level 1 (full resolution)",
    "cascade": "cascading refinement (full resolution; it refines already aligned features, so its offsets are residual)",
}


def render_html(summary: dict) -> str:
    """A self-contained page (no scripts, no network) showing every file of the summary, labelled.

    Plain f-strings rather than a template engine: the page is static, vsrx has no template
    dependency, and every value goes through ``html.escape``. One function per part of the page.
    """
    parts = [*_html_intro(summary), *_html_summary_table(summary["results"]), _html_legend(summary)]
    for level in summary["levels"]:
        parts.append(f"<h2>Level {html.escape(level)}: {html.escape(LEVEL_TEXT[level])}</h2>")
        for r in (r for r in summary["results"] if r["level"] == level):
            parts += _html_result(r, summary)
    parts.append("<p><a href='summary.json'>summary.json</a></p></body></html>")
    return "\n".join(parts)


def _html_intro(summary: dict) -> list[str]:
    """Head, style and the paragraphs that say what was run and in which units."""
    e = html.escape
    flow = summary.get("flow", "given")
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>vsrx offsets: {e(str(summary.get('clip', '')))} frame {e(str(summary.get('frame', '')))}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}img{image-rendering:pixelated;"
        "max-width:100%;border:1px solid #ccc}figure{display:inline-block;vertical-align:top;margin:.5em 1em .5em 0}"
        "figcaption{font-size:.85em;max-width:700px}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:.2em .5em;text-align:right}th{background:#eee}.warn{color:#b00;font-weight:bold}"
        "details{font-size:.85em}</style></head><body>",
        "<h1>What the alignment learned</h1>",
        f"<p>Clip <b>{e(str(summary.get('clip', '')))}</b>, centre frame <b>{e(str(summary.get('frame', '')))}</b>"
        f" (window {e(str(summary.get('window', '')))}), model <b>{e(str(summary.get('model', '')))}</b>: "
        f"{e(summary['mode'])}, G={summary['groups']} groups, N={summary['offsets']} offsets per group, "
        f"{summary['num_frame']} frames. Input {summary['size'][1]}x{summary['size'][0]} pixels. "
        f"Reference optical flow: <b>{e(str(flow))}</b>.</p>",
        f"<p>All lengths are in {e(summary['units'])}. Offsets are absolute sampling displacements "
        "(kernel position plus learned offset), (dy, dx) with aligned(p) = neighbour(p + offset(p)).</p>",
    ]


def _html_summary_table(results: list[dict]) -> list[str]:
    """One table row of numbers per (level, neighbour)."""
    rows = [
        "<h2>Summary</h2><table><tr><th>level</th><th>neighbour</th><th>clip frame</th><th>mean |offset|</th>"
        "<th>diversity</th><th>mean |flow|</th><th>within 1 px of flow</th><th>mean |offset − flow|</th>"
        "<th>mask mean</th><th>offset absmean</th><th>overflow</th></tr>",
    ]
    for r in results:
        mask = r["mask"]["mean"] if r["mask"] else None
        rows.append(
            f"<tr><td>{html.escape(r['level'])}</td><td>{r['neighbour']:+d}</td><td>{'–' if r['frame'] is None else r['frame']}</td><td>{_px(r['mean_abs_offset'])}</td>"
            f"<td>{_px(r['diversity'])}</td><td>{_px(r['flow_mean'])}</td><td>{_pct(r['within_1px'])}</td>"
            f"<td>{_px(r['mean_distance'])}</td><td>{'–' if mask is None else f'{mask:.3f}'}</td>"
            f"<td>{_num(r['offset_absmean'])}</td><td>{'<span class=warn>yes</span>' if r['overflow'] else 'no'}</td></tr>")
    rows.append("</table>")
    return rows


def _html_legend(summary: dict) -> str:
    """The colour wheel and the fusion figure."""
    e = html.escape
    return (
        f"<h2>Legend and fusion</h2><figure><img src='{e(summary['wheel_file'])}' alt='colour wheel'>"
        "<figcaption>Colour of a displacement: hue is the direction (right = +dx, down = +dy), saturation the length "
        "relative to the largest in the same picture (given under each grid).</figcaption></figure>"
        f"<figure><img src='{e(summary['fusion_file'])}' alt='fusion features'><figcaption>Centre frame, then the "
        "PCD-aligned features of each window frame (slots 0.."
        f"{summary['num_frame'] - 1}, one {e(summary['features'])} projection shared by all), then the fused features "
        "(own projection).</figcaption></figure>")


def _html_result(r: dict, summary: dict) -> list[str]:
    """The figures of one (level, neighbour), each with a caption that says how to read it."""
    e = html.escape
    files, level = r["files"], r["level"]
    where = "" if r["frame"] is None else f" (clip frame {r['frame']})"
    parts = [f"<h3>{e(level)}, neighbour {r['neighbour']:+d}{where}</h3>"]
    shown = "group means" if summary["groups_mean"] else "offsets"
    order = "".join(f"<li>{e(_label(o))}</li>" for o in r["order"])
    first = "the optical flow, then " if r["within_1px"] is not None else ""
    sorted_by = "sorted by mean l1 distance to the flow" if r["within_1px"] is not None else "in model order (no flow reference)"
    parts.append(
        f"<figure><img src='{e(files['offsets'])}' alt='offset fields'><figcaption>Tiles, row by row: {first}"
        f"{r['num_offsets'] if not summary['groups_mean'] else len(r['order'])} {shown} {sorted_by}. Full colour = "
        f"{_num(r['saturation_px'])} px.<details><summary>tile order</summary><ol>"
        + ("<li>optical flow</li>" if first else "") + order + "</ol></details></figcaption></figure>")
    parts.append(
        f"<figure><img src='{e(files['diversity'])}' alt='offset diversity'><figcaption>Offset diversity: "
        f"pixelwise standard deviation across the {r['num_offsets']} offsets (px; mean {_num(r['diversity'])}, "
        f"max {_num(r['diversity_max'])}).</figcaption></figure>")
    feat_order = ", ".join(f"n{n}" for n in r["feature_order"])
    parts.append(
        f"<figure><img src='{e(files['features'])}' alt='aligned features'><figcaption>Centre frame; centre "
        f"features; neighbour features before alignment; the neighbour features warped by each offset ({feat_order}, "
        f"group g's channels by offset g·n, before the modulation mask, {'closest to the flow first' if r['within_1px'] is not None else 'in model order'}); the aligner's "
        f"output. All but the last share one {e(summary['features'])} projection, so a good warp looks like the "
        "centre features."
        "</figcaption></figure>")
    if "distance" in files:
        parts.append(
            f"<figure><img src='{e(files['distance'])}' alt='distance histogram'><figcaption>Histogram of "
            f"|offset − flow| over all offsets and pixels (fraction per bin; red line at 1 px, grey bar: beyond). "
            f"Within 1 px: <b>{_pct(r['within_1px'])}</b>. Data: <a href='{e(files['distance_csv'])}'>"
            f"{e(files['distance_csv'])}</a>.</figcaption></figure>")
    if "mask" in files:
        parts.append(
            f"<figure><img src='{e(files['mask'])}' alt='mask versus distance'><figcaption>Mean modulation mask "
            "(0..1) per |offset − flow| bin (px); same CSV.</figcaption></figure>")
    if r["overflow"]:
        parts.append(f"<p class=warn>Offset overflow: mean |learned offset| {_num(r['offset_absmean'])} > 50.</p>")
    return parts


def _label(o: dict) -> str:
    who = f"group mean n{o['offset']}" if o["group"] is None else f"g{o['group']} n{o['offset']}"
    text = f"{who} (kernel {o['kernel'][0]:+d},{o['kernel'][1]:+d})"
    return text if o["l1_distance"] is None else f"{text}: l1 distance to flow {o['l1_distance']:.3g} px"


def viz_offsets(clip: str, out: str, opts: VizOptions, note: Callable[[str], None] | None = None) -> VizResult:
    """Load the model and the clip's window, compute the reference flow and write the report."""
    from vsrx.device import pick_device
    from vsrx.io.reader import open_source
    from vsrx.models import load_model, zoo
    from vsrx.viz.capture import read_window, window_for

    note = note or (lambda msg: None)
    levels = check_choices(opts.levels, opts.features, opts.flow)
    device = pick_device(opts.device)
    source = open_source(clip)
    name = opts.model or zoo.default_name()
    model = check_model(load_model(name, opts.align, opts.offsets, device=device), Path(name).name).float()
    neighbours = neighbours_of(model, opts.neighbors)
    frame, window = window_for(source.num_frames, opts.frame, model.config.num_frame, opts.padding)
    spynet, flow_label = load_spynet(opts.flow, opts.spynet, device)
    notes = []
    if opts.flow == "auto" and spynet is None:
        notes.append("no SPyNet weights found: offsets are shown without an optical-flow reference "
                     "(pass --spynet PATH for the flow comparisons)")
        note(notes[-1])
    frames = read_window(source, window)
    center = model.config.center
    flows = None if spynet is None else spynet_flows(spynet, frames, center, neighbours)
    meta = {"clip": str(clip), "frame": frame, "window": window, "model": Path(name).name, "flow": flow_label,
            "padding": opts.padding}
    summary = visualise(model, frames, out, neighbours=neighbours, levels=levels, flows=flows,
                        groups_mean=opts.groups_mean, features=opts.features, meta=meta)
    files = summary.pop("_files")
    return VizResult(str(out), str(Path(out) / "index.html"), summary, files, notes)
