"""`vsrx bench` at a tiny size: same-model naive references, ratios and output differences."""

import json

import pytest

from helpers import cli

from vsrx.bench import cases
from vsrx.errors import UsageError
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


def test_cases_are_every_combination_and_refuse_unknown_settings():
    got = cases(["dcn", "decomp-5"], ["fp32"], [1, 4], ["on", "off"], end_to_end=True)
    assert len(got) == 2 * 2 * 2 * 2 and {c.mode for c in got} == {"dcn", "decomp-5"}
    assert sum(c.end_to_end for c in got) == 8 and {c.cache for c in got} == {True, False}
    with pytest.raises(UsageError, match="--cache"):
        cases(["dcn"], ["fp32"], [1], ["maybe"])
    with pytest.raises(UsageError, match="unknown alignment mode 'decomp-x'"):
        cases(["decomp-x"], ["fp32"], [1], ["on"])


def test_keep_freed_memory_is_skipped_when_the_user_tunes_malloc(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
