"""Start-up time of the `vsrx` command: `--help`, `models`, and the first output frame.

    git archive main | tar -x -C /tmp/vsrx-before
    python benchmarks/startup.py --tree before=/tmp/vsrx-before --tree after=. --repeat 5 \
        --json benchmarks/results/startup.json

Each command runs as `python -m vsrx ...` with PYTHONPATH set to the tree, from an empty folder,
the trees interleaved run by run; the median wall time of each is reported. "first frame" is
`vsrx upscale samples/bbb_160x90.mp4 out.mp4 --end 1` (the bundled default model, one output
frame: import, model load, the first window's four decoded frames, one encoded frame).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "bbb_160x90.mp4"
COMMANDS = {
    "vsrx --help": ["--help"],
    "vsrx models": ["models"],
    "first frame": ["upscale", str(SAMPLE), "out.mp4", "--end", "1", "--overwrite", "--quiet"],
}


def timed(tree: Path, args: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vsrx", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", required=True, help="LABEL=PATH of a vsrx source tree (repeatable)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    trees = {label: Path(path) for label, _, path in (t.partition("=") for t in args.tree)}
    times: dict[str, dict[str, list[float]]] = {c: {label: [] for label in trees} for c in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeat):
            for command, cli_args in COMMANDS.items():
                for label, tree in trees.items():
                    times[command][label].append(timed(tree, cli_args, cwd))
    medians = {c: {label: statistics.median(v) for label, v in per.items()} for c, per in times.items()}
    for command, per in medians.items():
        print(f"{command:12} " + "  ".join(f"{label} {s:.2f} s" for label, s in per.items()))
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "cores": os.cpu_count(),
                                         "median_s": medians, "runs_s": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
