"""The prepared GPU run: verify, measure and train everything CUDA in one unattended command.

    python benchmarks/gpu_run.py --out $OUT                   # on the GPU machine; budget 540 s
    python benchmarks/gpu_run.py --out /tmp/kit --dry-run     # anywhere: every stage, tiny sizes

Stages, in order, each in its own processes and time-boxed, so a hang, a crash or a CUDA
out-of-memory in one is recorded and the next still runs; ``OUT/report.json`` is rewritten
atomically after every check, so a run killed at its limit still returns what it did:

1. env: GPU, memory, driver, torch/triton/CUDA/cuDNN versions; the data pack.
2. correctness (~60 s): the CUDA-only tests; fp16 and bf16 against fp32 on real frames for dcn,
   decomp-5, decomp-9 and flow; the fused Triton kernel against the unfused decomposition; the
   OOM retry under a capped allocator; `vsrx upscale --device cuda` end to end.
3. speed (~90 s): `vsrx bench` for edvr-m and edvr-s, fp16/bf16/fp32, batch 1/4/8, model only and
   end to end at 180x320 -> 720x1280, next to each naive reference; fused against unfused.
4. train (the rest): two `vsrx train` runs at once on the GPU, edvr-s decomp-5 continuing the
   bundled default and EDVR-M decomp-5 from scratch, fp16 AMP, on the data pack
   (`benchmarks/pack_data.py`): a short first invocation measures each run's speed, then
   `--resume DIR --iters N --time-limit T` sets the schedule so its cosine ends when time does.
5. after_train: fp16/bf16 against fp32 for the trained models.

Returned in OUT (at most 8 files, each under 16 MiB): report.json, gpu_run.log and one tar per
training run (config, metrics.jsonl, final weights; the training state where it fits).

``--dry-run`` runs the same stages and code paths at tiny sizes (tiny frames, a few steps, about
a second of training per invocation); checks that need CUDA report "skipped: no CUDA" without
one. Without a data pack it makes a synthetic one in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
RETURN_LIMIT = 15 * MIB  # each returned file stays under the device tool's 16 MiB
TRAIN_RESERVE = 30.0  # seconds kept after training for after_train and packing
PHASE1 = 45.0  # seconds of the first training invocation, which measures the speed
START_UP = 90.0  # seconds a training invocation may take beyond its time limit (imports, data, saving)

# stage -> (checks, time box in seconds); the train stage takes what the others leave
STAGES = {
    "env": (["env", "pack"], 70),  # the first torch import on a fresh machine reads a cold disk
    "correctness": (["cuda_tests", "bicubic", "fused", "precision", "oom_retry", "upscale_cli"], 75),
    "speed": (["bench_edvr_m", "bench_fused", "bench_edvr_s", "onnx"], 120),
    "train": ([], None),
    "after_train": (["trained_precision"], 20),
}
CHECK_BOX = {"env": 60, "pack": 30, "cuda_tests": 40, "bicubic": 15, "fused": 20, "precision": 30, "oom_retry": 30,
             "upscale_cli": 30, "bench_edvr_m": 55, "bench_fused": 20, "bench_edvr_s": 30, "onnx": 30,
             "trained_precision": 20}
TRAIN_RUNS = {  # name -> recipe; see BENCHMARKS.md ("The prepared GPU run") for why EDVR-M is decomp-5
    "edvr-s-decomp5": ["--init-from", "edvr-s-decomp5", "--preset", "edvr-s", "--align", "decomp", "--offsets", "5",
                       "--lr", "2e-4"],
    "edvr-m-decomp5": ["--preset", "edvr-m", "--align", "decomp", "--offsets", "5", "--lr", "4e-4"],
}
# --precision auto is fp16 AMP on CUDA and fp32 on a CPU, so a returned state also resumes on a CPU
TRAIN_COMMON = ["--dataset", "videos", "--synthetic-fraction", "0.3", "--offset-fidelity", "1", "--flow", "gt",
                "--frames", "7", "--restarts", "1", "--warmup", "100", "--ema", "0.999", "--precision", "auto",
                "--save-every", "500"]
TRAIN_SIZE = {False: ["--batch", "16", "--patch", "64", "--log-every", "25", "--workers", "6"],
              True: ["--batch", "2", "--patch", "16", "--log-every", "1", "--workers", "0"]}
DRY_HR = (64, 96)  # dry run: real frames are cut to this (LR 16x24)
DRY_SLACK = 4  # dry run: time boxes this many times longer (a shared CI CPU starts Python slowly)


# ---------------------------------------------------------------- the parent: stages, boxes, report


class Report:
    """report.json, rewritten atomically whenever something is added."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.data = path, {"kit": meta, "stages": {}}
        self.write()

    def stage(self, name: str, value: dict) -> None:
        self.data["stages"][name] = value
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


class Kit:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.dry = args, args.dry_run
        self.start = time.monotonic()
        self.slack = DRY_SLACK if self.dry else 1
        self.deadline = self.start + args.budget
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = (args.work or Path(tempfile.mkdtemp(prefix="vsrx_gpu_run_"))).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.pack = args.pack.resolve() if (args.pack / "manifest.json").is_file() else self.work / "pack"
        self.logf = open(self.out / "gpu_run.log", "ab")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.report = Report(self.out / "report.json", {
            "command": " ".join([sys.executable, *sys.argv]), "dry_run": self.dry, "budget_s": args.budget,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "pack": str(self.pack), "work": str(self.work)})

    def say(self, msg: str) -> None:
        line = f"[gpu_run {time.monotonic() - self.start:6.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write((line + "\n").encode())
        self.logf.flush()

    def worker(self, checks: list[str], events: Path) -> subprocess.Popen:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", ",".join(checks), "--work", str(self.work),
               "--pack", str(self.pack), "--events", str(events)] + (["--dry-run"] if self.dry else [])
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def run_checks(self, stage: str, names: list[str], stage_end: float) -> dict:
        """Run checks in worker processes; a check that crashes or overruns its box is recorded and
        a fresh worker goes on with the next one."""
        results: dict[str, dict] = {}
        pending, attempt = list(names), 0
        while pending and stage_end - time.monotonic() > 2:
            attempt += 1
            events = self.work / f"events-{stage}-{attempt}.jsonl"
            proc, offset, current, started, partial, progress = self.worker(pending, events), 0, None, 0.0, [], False
            while True:
                done = proc.poll() is not None
                offset, lines = _read_new(events, offset)
                for ev in lines:
                    if ev["event"] == "start":
                        current, started, partial, progress = ev["check"], time.monotonic(), [], True
                        self.say(f"{stage}: {current} ...")
                    elif ev["event"] == "partial":
                        partial.append(ev["row"])
                    elif ev["event"] == "end":
                        results[ev["check"]] = {**ev["result"], "seconds": round(ev["seconds"], 2)}
                        pending.remove(ev["check"])
                        current = None
                        self.say(f"{stage}: {ev['check']}: {ev['result'].get('status')} ({ev['seconds']:.1f} s)")
                        self.report.stage(stage, _stage_entry(results, pending))
                if done:
                    break
                now = time.monotonic()
                limit = CHECK_BOX.get(current, 30) * self.slack
                if current is not None and (now - started > limit or now > stage_end):
                    _kill(proc)
                    box = "its own" if now - started > limit else "the stage's"
                    results[current] = {"status": "timeout", "seconds": round(now - started, 1),
                                        "reason": f"ran past {box} time box", **({"partial": partial} if partial else {})}
                    pending.remove(current)
                    self.say(f"{stage}: {current}: timeout")
                    current = None
                    break
                if current is None and now > stage_end:
                    _kill(proc)
                    break
                time.sleep(0.2)
            if current is not None:  # the worker died inside a check
                results[current] = {"status": "crashed", "exit_code": proc.returncode, **({"partial": partial} if partial else {})}
                pending.remove(current)
                self.say(f"{stage}: {current}: crashed (exit {proc.returncode})")
            elif not progress:  # died before its first check: it would again
                for name in pending:
                    results[name] = {"status": "error", "error": f"worker exited with {proc.returncode} before the check"}
                pending = []
            self.report.stage(stage, _stage_entry(results, pending))
        for name in pending:
            results[name] = {"status": "not run", "reason": "no time left in the stage's time box"}
        return _stage_entry(results, [])

    def run(self) -> int:
        self.say(f"{'dry run' if self.dry else 'GPU run'}; budget {self.args.budget:.0f} s; work {self.work}; pack {self.pack}")
        for stage, (checks, box) in STAGES.items():
            t0, cpu0 = time.monotonic(), _child_cpu()
            if stage == "train":
                entry = self.train(self.deadline - TRAIN_RESERVE)
            else:  # the stages before training leave it at least a minute and a half
                reserve = 0 if stage == "after_train" else TRAIN_RESERVE + 60
                entry = self.run_checks(stage, checks, max(min(t0 + box * self.slack, self.deadline - reserve), t0 + 5))
            entry["seconds"] = round(time.monotonic() - t0, 1)
            entry["cpu_s"] = round(_child_cpu() - cpu0, 1)  # of the processes it started
            self.report.stage(stage, entry)
            self.say(f"stage {stage}: {entry['status']} in {entry['seconds']} s")
        self.report.data["returned"] = self.package()
        self.report.data["summary"] = summary(self.report.data)
        self.report.data["seconds"] = round(time.monotonic() - self.start, 1)
        self.report.write()
        for line in self.report.data["summary"]:
            self.say(line)
        self.logf.close()
        _cap_log(self.out / "gpu_run.log")
        return 0

    # ------------------------------------------------------------ train: two runs at once, two phases

    def train(self, end: float) -> dict:
        runs_dir = self.work / "train"
        runs_dir.mkdir(exist_ok=True)
        if not (self.pack / "train").is_dir():
            return {"status": "error", "error": f"no training frames in {self.pack}"}
        if end - time.monotonic() < (10 if self.dry else 60):
            return {"status": "skipped", "reason": "no time left for training"}
        size = TRAIN_SIZE[self.dry]
        base = [sys.executable, "-m", "vsrx", "train"]
        info: dict[str, dict] = {name: {"recipe": recipe + TRAIN_COMMON + size, "phases": []} for name, recipe in TRAIN_RUNS.items()}
        frames = self.pack / "train"  # relative to the checkout where it lies there, so the saved config resumes here too
        root = os.path.relpath(frames, ROOT) if frames.is_relative_to(ROOT) else str(frames)
        # phase 1: a short invocation whose log gives each run's speed with both on the GPU
        t1 = 1.0 if self.dry else min(PHASE1, max(5.0, (end - time.monotonic()) / 4))
        cmds = {name: base + r["recipe"] + ["--root", root, "--out", str(runs_dir / name),
                                             "--iters", "1000000", "--time-limit", f"{t1:g}"] for name, r in info.items()}
        self._train_phase(cmds, info, min(end, time.monotonic() + t1 + START_UP * self.slack), t1)
        # phase 2: the schedule fitted to the time that is left
        cmds = {}
        for name, r in info.items():
            p1 = r["phases"][-1]
            left = end - time.monotonic() - p1.get("overhead_s", 30.0) - 5
            if p1.get("steps_end") is None or p1.get("checkpoint_step") is None or left < (1 if self.dry else 20):
                continue
            t2 = 1.0 if self.dry else left
            iters = p1["checkpoint_step"] + max(1, int(p1["it_per_s"] * t2 * 0.95))
            r["planned_iters"] = iters
            cmds[name] = base + ["--resume", str(runs_dir / name), "--iters", str(iters), "--time-limit", f"{t2:g}"]
        if cmds:
            self._train_phase(cmds, info, end, 1.0 if self.dry else None)
        ok = all(r["phases"] and r["phases"][-1].get("exit_code") == 0 for r in info.values())
        return {"status": "ok" if ok else "failed", "runs": info}

    def _train_phase(self, cmds: dict[str, list[str]], info: dict, end: float, limit: float | None) -> None:
        procs, logs, t0 = {}, {}, time.monotonic()
        for name, cmd in cmds.items():
            k = len(info[name]["phases"]) + 1
            logs[name] = self.work / "train" / f"{name}-phase{k}.log"
            self.say(f"train: {name} phase {k}: {' '.join(cmd[2:])}")
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < end:
            time.sleep(0.5)
        for name, p in procs.items():
            killed = p.poll() is None
            if killed:
                _kill(p)
            wall = time.monotonic() - t0
            run = self.work / "train" / name
            phase = {"command": " ".join(cmds[name][2:]), "exit_code": p.returncode, "killed_at_deadline": killed,
                     "wall_s": round(wall, 1), **_speed(_metrics(run / "metrics.jsonl"), info[name]["phases"]),
                     "checkpoint_step": _ckpt_step(run)}
            if limit is not None:
                phase["overhead_s"] = round(max(wall - limit, 0.0), 1)
            info[name]["phases"].append(phase)
            self.logf.write(f"---- {logs[name].name}\n".encode() + logs[name].read_bytes()[-200_000:])
            self.logf.flush()
            self.say(f"train: {name}: exit {p.returncode}, steps {phase.get('steps_end')}, "
                     f"{phase.get('it_per_s', 0):.2f} it/s, loss {phase.get('loss')}")

    # ------------------------------------------------------------ what comes back

    def package(self) -> list[dict]:
        """One tar per training run (config, metrics, final weights; the state where it fits)."""
        returned = []
        for name in TRAIN_RUNS:
            run = self.work / "train" / name
            if not (run / "model.safetensors").is_file():
                continue
            members = [run / "config.json", run / "metrics.jsonl", run / "model.safetensors"]
            members = [m for m in members if m.is_file()]
            if _size(members) > RETURN_LIMIT:
                members[members.index(run / "model.safetensors")] = _half(run / "model.safetensors")
            ckpts = sorted(p for p in (run / "ckpt").glob("step_*") if (p / "state.pt").is_file())
            state = list(ckpts[-1].iterdir()) if ckpts else []
            with_state = bool(state) and _size(members + state) <= RETURN_LIMIT
            members += state if with_state else []
            tar = self.out / f"{name}.tar"
            with tarfile.open(tar, "w") as t:
                for m in members:
                    t.add(m, arcname=f"{name}/{m.relative_to(run)}")
            returned.append({"file": tar.name, "bytes": tar.stat().st_size, "training_state": with_state,
                             "members": [str(m.relative_to(run)) for m in members]})
        returned += [{"file": "report.json"}, {"file": "gpu_run.log"}]
        return returned


def _stage_entry(results: dict, pending: list[str]) -> dict:
    states = [r.get("status") for r in results.values()]
    if pending:
        status = "running"
    elif any(s in ("error", "crashed", "timeout") for s in states):
        status = "error"
    elif any(s == "failed" for s in states):
        status = "failed"
    elif states and all(s in ("skipped", "not run") for s in states):
        status = "skipped"
    else:
        status = "ok"
    return {"status": status, "checks": results}


def _child_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _read_new(path: Path, offset: int) -> tuple[int, list[dict]]:
    if not path.is_file():
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return offset + end, [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def _kill(proc: subprocess.Popen) -> None:
    """End a process this run started and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ckpt_step(run: Path) -> int | None:
    steps = [int(p.name.removeprefix("step_")) for p in (run / "ckpt").glob("step_*") if (p / "state.pt").is_file()]
    return max(steps, default=None)


def _speed(metrics: list[dict], earlier: list[dict]) -> dict:
    """Steps and training speed of this invocation from its metrics.jsonl lines (steady state:
    between its first and last log lines, so start-up and the first steps do not count)."""
    start = earlier[-1].get("checkpoint_step") or 0 if earlier else 0
    logs = [m for m in metrics if "loss" in m and m["step"] > start]
    if not logs:
        return {"steps_start": start, "steps_end": None}
    first, last = logs[0], logs[-1]
    # it_per_s is a running mean since this invocation began: seconds at a log line = steps / it_per_s
    t_first, t_last = (first["step"] - start) / first["it_per_s"], (last["step"] - start) / last["it_per_s"]
    rate = (last["step"] - first["step"]) / (t_last - t_first) if t_last > t_first else last["it_per_s"]
    return {"steps_start": start, "steps_end": last["step"], "it_per_s": rate, "loss": last["loss"], "lr": last["lr"]}


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _half(path: Path) -> Path:
    """An fp16 copy of a weights file (same metadata), for a model too large to return in fp32."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    out = path.with_name("model-fp16.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}, str(out), meta)
    return out


def _cap_log(path: Path) -> None:
    """Keep the log under the return limit: its start and its end."""
    if path.stat().st_size <= RETURN_LIMIT:
        return
    data = path.read_bytes()
    keep = RETURN_LIMIT // 2
    path.write_bytes(data[:keep] + b"\n[... log cut ...]\n" + data[-keep:])


def summary(report: dict) -> list[str]:
    """A few lines for the device tool's output tail."""
    lines = []
    for stage, entry in report["stages"].items():
        note = f" - {entry['error'] if 'error' in entry else entry.get('reason', '')}" if "error" in entry or "reason" in entry else ""
        lines.append(f"{stage}: {entry.get('status')} ({entry.get('seconds')} s){note}")
        for name, r in entry.get("checks", {}).items():
            note = r.get("brief") or r.get("error") or r.get("reason")
            lines.append(f"  {name}: {r.get('status')}" + (f" - {str(note)[:200]}" if note else ""))
        for name, r in entry.get("runs", {}).items():
            p = r["phases"][-1] if r["phases"] else {}
            lines.append(f"  {name}: exit {p.get('exit_code')}, step {p.get('steps_end')}, {p.get('it_per_s', 0):.2f} it/s, "
                         f"loss {p.get('loss')}")
    lines.append("returned: " + ", ".join(r["file"] for r in report.get("returned", [])))
    return lines


# ---------------------------------------------------------------- the worker: the checks themselves


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.dry, self.work, self.pack, self.events = args.dry_run, args.work, args.pack, args.events
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"

    def emit(self, event: dict) -> None:
        with open(self.events, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")


def worker(args: argparse.Namespace) -> int:
    ctx = Ctx(args)
    for name in args.worker.split(","):
        ctx.emit({"event": "start", "check": name})
        t0 = time.monotonic()
        try:
            result = CHECKS[name](ctx)
        except Exception as exc:  # recorded; the next check still runs
            traceback.print_exc()
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500],
                      "traceback": traceback.format_exc()[-3000:]}
        ctx.emit({"event": "end", "check": name, "seconds": time.monotonic() - t0, "result": result})
    return 0


NO_CUDA = "skipped: no CUDA"


def check_env(ctx: Ctx) -> dict:
    import platform

    import torch

    info = {"status": "ok", "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": ctx.cuda}
    for module in ("torchvision", "triton", "av", "numpy", "safetensors"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - absence is what is recorded
            info[module] = f"not importable ({type(exc).__name__})"
    if not ctx.cuda:
        info["gpu"] = NO_CUDA
        return info
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                   "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"failed: {exc}"
    info["brief"] = f"{props.name}, {info['gpu']['memory_gib']} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return info


def check_pack(ctx: Ctx) -> dict:
    """Describe the data pack, or make a synthetic one (dry runs, or a run without a pack)."""
    manifest = ctx.pack / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        keep = ("clips", "frames", "sources", "mib", "copied_frames", "jpeg_frames", "jpeg_psnr_rgb", "jpeg_psnr_y",
                "quality", "crop", "segment", "real", "synthetic")
        return {"status": "ok", **{k: m[k] for k in keep if k in m},
                "brief": f"{m.get('frames')} frames in {m.get('clips')} clips" + (" (synthetic)" if m.get("synthetic") else "")}
    import numpy as np
    import torch
    import torch.nn.functional as F

    from vsrx.io.images import write_png

    h, w = DRY_HR if ctx.dry else (480, 852)
    h, w = 2 * h, 2 * w  # training frames: room for the patch plus its margin
    gen = torch.Generator().manual_seed(0)
    for clip in range(2):
        base = F.interpolate(torch.rand(1, 3, h // 8 + 4, w // 8 + 4, generator=gen), scale_factor=8, mode="bicubic")
        base = (base[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        folder = ctx.pack / "train" / f"synthetic{clip}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            write_png(folder / f"{i:05d}.png", np.ascontiguousarray(base[2 * i : 2 * i + h, i : i + w]))
    manifest.write_text(json.dumps({"synthetic": True, "clips": 2, "frames": 20, "real": "train/synthetic0"}))
    return {"status": "ok", "synthetic": True, "clips": 2, "frames": 20, "brief": "synthetic frames (no data pack)"}


def real_frames(ctx: Ctx, count: int = 8) -> list:
    """The first `count` frames (dry run: at most 4) of the pack's lossless real clip, cropped to
    multiples of 4 (dry run: to DRY_HR)."""
    from vsrx.evaluate.bicubic import modcrop
    from vsrx.io.images import list_images, read_image

    folder = ctx.pack / json.loads((ctx.pack / "manifest.json").read_text())["real"]
    frames = [modcrop(read_image(f), 4) for f in list_images(folder)[: min(count, 3) if ctx.dry else count]]
    if ctx.dry:
        h, w = DRY_HR
        frames = [f[:h, :w] for f in frames]
    return frames


def lr_frames(ctx: Ctx, count: int = 8) -> list:
    from vsrx.evaluate.bicubic import downscale_x4_uint8

    return [downscale_x4_uint8(f) for f in real_frames(ctx, count)]


def sr(model, frames: list, device: str, dtype, **options) -> list:
    """uint8 HxWx3 outputs of `model` run by the streaming Upscaler over uint8 LR frames."""
    import torch

    from vsrx.inference import Upscaler, to_uint8

    up = Upscaler(model, device=device, dtype=dtype, **options)
    return [to_uint8(x).cpu().numpy() for x in up.stream((torch.from_numpy(f).permute(2, 0, 1) for f in frames), len(frames))]


def compare(a: list, b: list) -> dict:
    """Frame counts, largest difference in grey levels, mean |difference|, the share of values off
    by more than 1 and PSNR (peak 255, "inf" when equal) over the frames both lists have."""
    import math

    import numpy as np

    diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b, strict=False)]
    mse = float(np.mean([np.mean(d.astype(np.float64) ** 2) for d in diffs]))
    return {"frames": [len(a), len(b)], "max_diff": int(max(d.max() for d in diffs)),
            "mean_abs_diff": float(np.mean([d.mean() for d in diffs])), "over_1": float(np.mean([(d > 1).mean() for d in diffs])),
            "psnr": "inf" if mse == 0 else 10 * math.log10(255**2 / mse)}


def load(name: str, align: str | None, offsets: int | None, device: str, precision: str):
    from vsrx.device import pick_device, pick_dtype
    from vsrx.inference import Engine
    from vsrx.models import load_sr_model

    dev = pick_device(device)
    dtype = pick_dtype(precision, dev)
    return Engine().prepare(load_sr_model(name, align, offsets, dev)[0], dev, dtype), dtype


class strict_fp32:
    """fp32 that is fp32 on CUDA: no TF32 in cuDNN convolutions or matrix products (the reference)."""

    def __enter__(self):
        import torch

        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def check_cuda_tests(ctx: Ctx) -> dict:
    """tests/ that need CUDA (fused kernel, GPU bicubic), through pytest with a JUnit report."""
    import importlib.util
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest not installed (the fused and bicubic checks compare the same)"}
    xml = ctx.work / "cuda_tests.xml"
    select = "cuda and not compiles" if ctx.dry and not ctx.cuda else "cuda"  # AOT compile runs in CI anyway
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fused.py", "tests/test_bicubic.py", "-k", select,
                           "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-5000:], proc.stderr[-2000:], flush=True)
    tests = {}
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            tests[case.get("name")] = ("passed" if outcome is None else outcome.tag) + (
                f": {outcome.get('message', '')[:200]}" if outcome is not None else "")
    failed = [n for n, t in tests.items() if t.startswith(("failure", "error"))]
    passed = sum(t == "passed" for t in tests.values())
    status = "failed" if failed or proc.returncode not in (0, 5) else ("ok" if passed else "skipped")
    return {"status": status, "exit_code": proc.returncode, "tests": tests,
            "brief": f"{passed} passed, {len(failed)} failed, {len(tests) - passed - len(failed)} skipped"}


def check_bicubic(ctx: Ctx) -> dict:
    """MATLAB-bicubic x1/4 on the GPU (how training makes LR patches) against the CPU, real frames."""
    import numpy as np
    import torch

    from vsrx.evaluate.bicubic import imresize

    hr = torch.from_numpy(np.stack(real_frames(ctx, 7))).permute(0, 3, 1, 2).float()
    cpu = imresize(hr, 0.25)
    out = {"frames": list(hr.shape), "float32_vs_float64": float((cpu.double() - imresize(hr.double(), 0.25)).abs().max() / 255)}
    if not ctx.cuda:
        return {"status": "ok", **out, "cuda_vs_cpu": NO_CUDA}
    gpu = imresize(hr.cuda(), 0.25).cpu()
    diff = float((gpu - cpu).abs().max() / 255)
    rounded_equal = float((gpu.clamp(0, 255).round() == cpu.clamp(0, 255).round()).float().mean())
    batch = torch.randint(0, 256, (16, 7, 3, 272, 272), device="cuda").float()  # a training batch of HR crops
    imresize(batch, 0.25)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        imresize(batch, 0.25)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 5 * 1000
    return {"status": "ok" if diff <= 1e-5 else "failed", **out, "cuda_vs_cpu_max_abs": diff,
            "rounded_lr_equal_fraction": rounded_equal, "batch16_ms": ms,
            "brief": f"max |GPU - CPU| {diff:.2e} of full scale; LR for a batch of 16 in {ms:.1f} ms"}


def check_fused(ctx: Ctx) -> dict:
    """Model level: decomp-5 and decomp-9 outputs with the fused Triton kernel against the unfused
    decomposition (CUDA); on CPU the unfused path against the torchvision one (the naive reference)."""
    from vsrx.ops import fused

    lr = lr_frames(ctx)
    out = {}
    for mode, (name, align, offsets) in {"decomp-5": ("edvr-s-decomp5", None, None), "decomp-9": ("edvr-s-dcn", "decomp", 9)}.items():
        for precision in (["fp16", "fp32"] if ctx.cuda else ["fp32"]):
            model, dtype = load(name, align, offsets, ctx.device, precision)
            with strict_fp32():
                if ctx.cuda:
                    a = sr(model, lr, ctx.device, dtype)
                    available, fused.available = fused.available, lambda x: False
                    try:
                        b = sr(model, lr, ctx.device, dtype)
                    finally:
                        fused.available = available
                    out[f"{mode} {precision} fused vs unfused"] = compare(a, b)
                else:
                    from vsrx.bench import with_deform_conv_aligners

                    a = sr(model, lr, ctx.device, dtype)
                    model = with_deform_conv_aligners(model)
                    out[f"{mode} {precision} unfused vs torchvision"] = compare(a, sr(model, lr, ctx.device, dtype))
    worst = max(v["max_diff"] for v in out.values())
    if not ctx.cuda:
        return {"status": "ok", "fused": NO_CUDA, "results": out}
    return {"status": "ok" if worst <= 1 else "failed", "results": out, "brief": f"largest difference {worst} grey levels"}


def precision_table(ctx: Ctx, models: dict) -> dict:
    """fp16/bf16 outputs against fp32 (strict) for each (name, align, offsets) on real frames."""
    lr = lr_frames(ctx)
    table = {}
    for mode, (name, align, offsets) in models.items():
        model, dtype = load(name, align, offsets, ctx.device, "fp32")
        with strict_fp32():
            ref = sr(model, lr, ctx.device, dtype)
        table[mode] = {}
        for precision in ("fp16", "bf16"):
            if precision == "fp16" and not ctx.cuda:
                table[mode][precision] = NO_CUDA
                continue
            model, dtype = load(name, align, offsets, ctx.device, precision)
            table[mode][precision] = compare(sr(model, lr, ctx.device, dtype), ref)
    return table


def _precision_result(ctx: Ctx, table: dict) -> dict:
    fp16 = {m: r["fp16"]["max_diff"] for m, r in table.items() if isinstance(r["fp16"], dict)}
    worst = max(fp16.values(), default=None)
    brief = ", ".join(f"{m} fp16 {d}" for m, d in fp16.items()) + " grey levels from fp32" if fp16 else "fp16 " + NO_CUDA
    return {"status": "ok" if worst is None or worst <= 1 else "failed", "target": "fp16 within 1 grey level of fp32",
            "lr_size": list(lr_frames(ctx, 1)[0].shape), "results": table, "brief": brief}


def check_precision(ctx: Ctx) -> dict:
    table = precision_table(ctx, {"dcn": ("edvr-s-dcn", None, None), "decomp-5": ("edvr-s-decomp5", None, None),
                                  "decomp-9": ("edvr-s-dcn", "decomp", 9), "flow": ("edvr-s-flow", None, None)})
    return _precision_result(ctx, table)


def check_trained_precision(ctx: Ctx) -> dict:
    runs = {p.parent.name: (str(p), None, None) for p in sorted((ctx.work / "train").glob("*/model.safetensors"))}
    if not runs:
        return {"status": "skipped", "reason": "no trained weights"}
    return _precision_result(ctx, precision_table(ctx, runs))


def check_oom_retry(ctx: Ctx) -> dict:
    """Cap the CUDA allocator below what an untiled run of HR-sized frames needs: the retry must
    tile, lose no frame and match the uncapped run. On CPU: the tiled path against the untiled one."""
    import torch

    frames = real_frames(ctx, 5)  # HR frames as input: a 4x larger output than the usual LR
    if ctx.dry:
        frames = [f[:32, :48] for f in frames]
    model, dtype = load("edvr-s-decomp5", None, None, ctx.device, "auto")
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    full = sr(model, frames, ctx.device, dtype)
    out = {"input": list(frames[0].shape), "frames_in": len(frames), "frames_uncapped": len(full)}
    if not ctx.cuda:
        tile = max(frames[0].shape[:2]) // 2
        tiled = sr(model, frames, ctx.device, dtype, tile=tile)
        return {"status": "ok" if len(tiled) == len(frames) else "failed", **out, "retry": NO_CUDA, "tile": tile,
                "tiled_vs_untiled": compare(tiled, full)}
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = peak // 2
    notes: list[str] = []
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        torch.cuda.reset_peak_memory_stats()
        from vsrx.inference import Upscaler, to_uint8

        up = Upscaler(model, device=ctx.device, dtype=dtype, on_retry=notes.append)
        capped = [to_uint8(x).cpu().numpy() for x in up.stream((torch.from_numpy(f).permute(2, 0, 1) for f in frames), len(frames))]
        peak_capped = torch.cuda.max_memory_allocated()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    same_tile = sr(model, frames, ctx.device, dtype, tile=up.tile)
    vs_full, vs_tile = compare(capped, full), compare(capped, same_tile)
    close = vs_full["psnr"] == "inf" or vs_full["psnr"] >= 45  # tiles see 32 LR pixels of context, not all
    ok = len(capped) == len(frames) and bool(notes) and vs_tile["max_diff"] <= 1 and close
    return {"status": "ok" if ok else "failed", "target": "every frame; equal to the same tiles uncapped (1 grey level)", **out, "peak_uncapped_mib": peak / MIB, "cap_mib": cap / MIB,
            "peak_capped_mib": peak_capped / MIB, "retries": notes, "tile": up.tile, "frames_capped": len(capped),
            "capped_vs_uncapped": vs_full, "capped_vs_same_tile_uncapped": vs_tile,
            "brief": f"{len(capped)}/{len(frames)} frames, {len(notes)} retries down to tile {up.tile}, "
                     f"max diff {vs_full['max_diff']} (same tile: {vs_tile['max_diff']})"}


def check_upscale_cli(ctx: Ctx) -> dict:
    """`vsrx upscale --device cuda` as a user runs it: a frame folder, and a video with audio when PyAV is there."""
    from vsrx.io.images import list_images, read_image, write_png

    src = ctx.work / "cli_in"
    src.mkdir(exist_ok=True)
    lr = lr_frames(ctx)
    for i, f in enumerate(lr):
        write_png(src / f"{i:05d}.png", f)
    out: dict = {}

    def vsrx(*args: str) -> tuple[int, dict | str]:
        proc = subprocess.run([sys.executable, "-m", "vsrx", "upscale", *args, "--device", ctx.device, "--json", "--quiet",
                               "--overwrite"], cwd=ROOT, capture_output=True, text=True)
        print(proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
        if proc.returncode:
            return proc.returncode, proc.stderr.strip()[-500:]
        return 0, json.loads(proc.stdout.strip().splitlines()[-1])

    code, res = vsrx(str(src), str(ctx.work / "cli_out"))
    files = list_images(ctx.work / "cli_out") if code == 0 else []
    shape_ok = bool(files) and read_image(files[0]).shape == (4 * lr[0].shape[0], 4 * lr[0].shape[1], 3)
    out["frames"] = {"exit_code": code, "result": res, "files": len(files), "size_4x": shape_ok}
    ok = code == 0 and len(files) == len(lr) and shape_ok
    try:
        import av
    except ImportError:
        out["video"] = "skipped: PyAV not importable"
    else:
        if ctx.dry:
            sys.path.insert(0, str(ROOT / "tests"))
            from clips import make_clip

            clip = make_clip(ctx.work / "clip.mp4", frames=8, size=(32, 24), audio=True)
        else:
            clip = ROOT / "samples" / "bbb_160x90.mp4"
        code, res = vsrx(str(clip), str(ctx.work / "cli_out.mp4"))
        audio = frames = None
        if code == 0:
            with av.open(str(ctx.work / "cli_out.mp4")) as c:
                audio = len(c.streams.audio)
                frames = sum(1 for _ in c.decode(video=0))
        out["video"] = {"input": clip.name, "exit_code": code, "result": res, "frames": frames, "audio_streams": audio}
        ok = ok and code == 0 and bool(audio)
    brief = f"{out['frames']['files']}/{len(lr)} frames" + (f", {res['fps']:.1f} fps" if isinstance(res, dict) else "")
    return {"status": "ok" if ok else "failed", **out, "brief": brief}


def _bench(ctx: Ctx, preset: str) -> dict:
    from vsrx.bench import Case, bench

    if ctx.dry:
        size, frames, num_frame, batches = (16, 20), 2, 3, (1, 2)
        precisions = ("fp16", "fp32") if ctx.cuda else ("fp32", "bf16")
    else:
        size, frames, num_frame, batches = (180, 320), 32, 7, (1, 4, 8)
        precisions = ("fp16", "bf16", "fp32")
    main_p, b = precisions[0], batches
    # most wanted first: a time box cuts the tail, and every finished case is kept
    order = [(False, main_p, x) for x in b] + [(True, main_p, b[-1 if ctx.dry else 1])]
    order += [(False, p, b[-1 if ctx.dry else 1]) for p in precisions[1:]]
    order += [(e, p, x) for e in (False, True) for p in precisions for x in b]
    if ctx.dry:  # the same paths in fewer processes: model only for edvr-m, end to end for edvr-s
        order = [o for o in order if o[0] == (preset == "edvr-s")][:1]
    cases, seen = [], set()
    for e2e, p, x in order:
        if (e2e, p, x) not in seen:
            seen.add((e2e, p, x))
            cases.append(Case(mode="decomp-5", precision=p, batch=x, end_to_end=e2e))
    result = bench(cases, preset, size, frames, ctx.device, num_frame, report=lambda r: ctx.emit({"event": "partial", "row": r}),
                   keep_going=True)
    rows = result["results"]
    errors = [r for r in rows if "error" in r]
    best = {e: max((r for r in rows if not r.get("reference") and "fps" in r and r["end_to_end"] == e and
                    r["precision"] == main_p), key=lambda r: r["fps"], default=None) for e in (False, True)}
    brief = ", ".join(f"{'e2e' if e else 'model'} {r['precision']} b{r['batch']} {r['fps']:.1f} fps ({r.get('speedup', 0):.1f}x naive)"
                      for e, r in best.items() if r)
    return {"status": "failed" if errors else "ok", "preset": preset, "lr_size": list(size), "num_frame": num_frame,
            "timed_frames": frames, "machine": result["machine"], "rows": rows, "brief": brief}


def check_bench_edvr_m(ctx: Ctx) -> dict:
    return _bench(ctx, "edvr-m")


def check_bench_edvr_s(ctx: Ctx) -> dict:
    return _bench(ctx, "edvr-s")


def check_bench_fused(ctx: Ctx) -> dict:
    """benchmarks/bench_fused.py: the fused kernel against the unfused path (and torchvision for N=9)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_fused", ROOT / "benchmarks" / "bench_fused.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if ctx.dry:
        argv = ["--device", ctx.device, "--size", "6x8", "--batch", "1", "--channels", "8", "--groups", "2",
                "--offsets", "5,9", "--dtypes", "fp32", "--reps", "1", "--warmup", "0"]
    else:
        argv = ["--device", ctx.device, "--size", "180x320", "--batch", "7", "--channels", "64", "--groups", "8",
                "--offsets", "5,9", "--dtypes", "fp16,bf16,fp32", "--reps", "10", "--warmup", "2"]
    rows = module.main(argv)
    # relative to the float32 unfused result, whose 1x1 convolution may itself use TF32 on a GPU
    # (the float64 comparison is tests/test_fused.py's, in cuda_tests)
    tol = {"fp32": 2e-3, "fp16": 5e-3, "bf16": 3e-2}
    bad = [r for r in rows if r["method"].startswith("fused") and ("error" in r or r["rel_err"] > tol[r["dtype"]])]
    fused_rows = [r for r in rows if r["method"] == "fused" and "ms" in r]
    brief = ", ".join(f"N={r['N']} {r['dtype']} fused {r['ms']:.2f} ms" for r in fused_rows) or "fused " + NO_CUDA
    return {"status": "failed" if bad else "ok", "command": "python benchmarks/bench_fused.py " + " ".join(argv),
            "rows": rows, "brief": brief, **({} if ctx.cuda else {"fused": NO_CUDA})}


def check_onnx(ctx: Ctx) -> dict:
    """The default model as `vsrx export` writes it, run by onnxruntime's GPU providers (CUDA, then
    TensorRT, whose engine build may take the rest of the box) on one window of real LR frames:
    ms per window and the largest difference from the PyTorch float32 model in grey levels. The
    image's onnxruntime may have no GPU provider; the report then says which it has (dry run: the
    CPU provider stands in)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "skipped", "brief": "onnxruntime is not installed"}
    import numpy as np
    import torch

    from vsrx.export import INPUT, export_onnx
    from vsrx.inference import pad_to_multiple
    from vsrx.io.windows import frame_indices
    from vsrx.models import load_model

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    if not providers and not ctx.dry:
        return {"status": "skipped", "providers": available,
                "brief": f"onnxruntime {ort.__version__} has no GPU provider ({', '.join(available)})"}
    model = load_model("edvr-s-decomp5")
    lr = lr_frames(ctx, model.config.num_frame)  # the dry run has fewer: the window repeats some, as at a clip's end
    ids = frame_indices(len(lr) // 2, model.config.num_frame, len(lr), "reflection_circle")
    frames = pad_to_multiple(torch.stack([torch.from_numpy(lr[i]).permute(2, 0, 1) for i in ids]).float() / 255)
    window = frames.unsqueeze(0)
    with torch.no_grad():
        expected = model.to(ctx.device)(window.to(ctx.device)).float().cpu().numpy()
    path = ctx.work / "edvr-s-decomp5.onnx"
    export_onnx(model.cpu(), path, overwrite=True)
    rows, feed = [], {INPUT: window.numpy()}
    for provider in providers or ["CPUExecutionProvider"]:
        row = {"provider": provider, "lr_size": list(window.shape[-2:])}
        try:
            session = ort.InferenceSession(str(path), providers=[provider])
            t0 = time.perf_counter()
            got = session.run(None, feed)[0]  # TensorRT builds its engine here
            row["first_run_s"] = time.perf_counter() - t0
            reps = 1 if ctx.dry else 10
            t0 = time.perf_counter()
            for _ in range(reps):
                session.run(None, feed)
            row["ms_per_window"] = (time.perf_counter() - t0) / reps * 1000
            row["max_diff_grey_levels"] = float(np.abs(got - expected).max() * 255)
        except Exception as exc:  # noqa: BLE001 (a provider that fails to load is a result too)
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        ctx.emit({"event": "partial", "row": row})
    brief = ", ".join(f"{r['provider'].removesuffix('ExecutionProvider')} {r['ms_per_window']:.1f} ms/window "
                      f"(max diff {r['max_diff_grey_levels']:.2f})" if "ms_per_window" in r else
                      f"{r['provider']}: {r['error']}" for r in rows)
    return {"status": "failed" if any("error" in r for r in rows) else "ok", "onnxruntime": ort.__version__,
            "providers": available, "rows": rows, "brief": brief}


CHECKS = {"env": check_env, "pack": check_pack, "cuda_tests": check_cuda_tests, "bicubic": check_bicubic,
          "fused": check_fused, "precision": check_precision, "oom_retry": check_oom_retry,
          "upscale_cli": check_upscale_cli, "bench_edvr_m": check_bench_edvr_m, "bench_fused": check_bench_fused,
          "bench_edvr_s": check_bench_edvr_s, "onnx": check_onnx, "trained_precision": check_trained_precision}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for report.json, gpu_run.log and the training tars (what comes back)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run, start-up to packing")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes (CPU without a GPU), for CI")
    p.add_argument("--pack", type=Path, default=ROOT / ".gpu_pack", help="data pack from benchmarks/pack_data.py")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        return worker(args)
    if args.out is None:
        p.error("--out is required")
    return Kit(args).run()


if __name__ == "__main__":
    sys.exit(main())
