"""`vsrx bench` at a tiny size: same-model naive references, ratios and output differences."""

import json

import pytest

from helpers import cli

from vsrx.runtime import keep_freed_memory


@pytest.mark.slow
def test_bench_compares_each_mode_with_its_naive_reference(tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--modes", "decomp-5,flow", "--size", "16x20", "--frames", "2", "--num-frame", "3",
                 "--threads", "1", "--json", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    refs = [r for r in rows if r["reference"]]
    assert sorted(r["mode"] for r in refs) == ["decomp-5", "flow"]
    for r in refs:  # the naive run: torchvision's DCN, no cache, default allocator
        assert (r["dcn_impl"], r["cache"], r["tuned_malloc"], r["speedup"], r["max_diff"]) == ("torchvision", False, False, 1.0, 0)
    fast = [r for r in rows if not r["reference"]]
    assert sorted(r["mode"] for r in fast) == ["decomp-5", "flow"]
    for r in fast:  # same model, so the output must agree with its own reference
        assert r["cache"] and r["tuned_malloc"] and r["max_diff"] <= 1 and r["speedup"] > 0


def test_keep_freed_memory_is_skipped_when_the_user_tunes_malloc(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
