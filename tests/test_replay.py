"""`wakegate replay`: a short slice of a real trace through the real stack on the sim backend."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from harness import ROOT

from wakegate.replay.report import percentile, replica_timeline
from wakegate.replay.traces import TraceRequest, load_trace, prompt_text, window

TRACES = ROOT.parent / "shared" / "data" / "traces"


def test_trace_loaders_read_both_formats() -> None:
    azure = load_trace(TRACES / "azure2023_code.csv")
    mooncake = load_trace(TRACES / "mooncake_conversation.jsonl")
    assert len(azure) == 8819 and azure[0].at_s == 0.0
    assert 3400 < azure[-1].at_s < 3450
    assert len(mooncake) == 12031 and mooncake[0].hash_ids[:2] == (0, 1)
    assert all(a.at_s <= b.at_s for a, b in itertools.pairwise(azure))
    sliced = window(azure, 200, 210)
    assert sliced and sliced[0].at_s >= 0 and sliced[-1].at_s < 10


def test_prompts_have_one_word_per_token_and_shared_prefix_blocks() -> None:
    a = prompt_text(TraceRequest(0, 1030, 1, (7, 8, 9)))
    b = prompt_text(TraceRequest(0, 600, 1, (7, 5)))
    assert len(a.split()) == 1030 and len(b.split()) == 600
    assert a.split()[:512] == b.split()[:512] and a.split()[512] != b.split()[512]


def test_report_helpers() -> None:
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    usage = [{"start_s": 0, "end_s": 10}, {"start_s": 5, "end_s": None}]
    assert replica_timeline(usage, 100) == [(0, 1), (5, 2), (10, 1)]


def test_replay_compares_policies_and_writes_table_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "wakegate", "replay", str(TRACES / "azure2023_code.csv"),
         "--start-s", "240", "--end-s", "300", "--speed", "10", "--load-s", "5",
         "--max-replicas", "2", "--cooldown-s", "20",
         "--policy", "wakegate", "--policy", "always-on", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "table.md").read_text()
    assert table.splitlines()[0].startswith("| policy | routing | GPU-s |")
    assert {"wakegate.png", "always-on.png", "wakegate.json", "always-on.json"} <= {
        p.name for p in out.iterdir()
    }
    runs = {p: json.loads((out / f"{p}.json").read_text()) for p in ("wakegate", "always-on")}
    expected = len(window(load_trace(TRACES / "azure2023_code.csv"), 240, 300))
    for run in runs.values():
        assert len(run["results"]) == expected
        assert all(r["ok"] for r in run["results"]), [r for r in run["results"] if not r["ok"]]
        assert run["usage"], "the sim host recorded GPU leases"
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    gpu = {p: float(rows[p].split("|")[3].replace(",", "")) for p in rows}
    assert gpu["always-on"] >= gpu["wakegate"] > 0


def test_a_warm_replay_starts_the_clock_with_the_replicas_ready(tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = [sys.executable, "-m", "wakegate", "replay", str(TRACES / "azure2023_code.csv"),
            "--start-s", "240", "--end-s", "270", "--speed", "10", "--load-s", "5",
            "--max-replicas", "2", "--warm"]  # fmt: skip
    proc = subprocess.run(
        [*base, "--policy", "always-on", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "always-on.json").read_text())
    assert run["plan"]["warm"] is True
    assert run["results"] and not any(r["cold"] for r in run["results"])
    assert all(s["ready"] == 2 for s in run["samples"]), "both replicas ready from the start"
    # Nothing to warm: a policy that starts at zero replicas is refused, naming the option.
    refused = subprocess.run(
        [*base, "--policy", "wakegate"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert refused.returncode == 2 and "--warm" in refused.stderr


def test_policy_durations_are_compressed_with_the_trace_defaults_included() -> None:
    from wakegate.replay.run import scaled_params

    knative = scaled_params("knative", {"stable_window_s": 120.0}, 10.0)
    assert knative["stable_window_s"] == 12.0
    assert knative["scale_to_zero_grace_s"] == 3.0  # default 30 s, compressed
    assert knative["panic_threshold"] == 2.0  # a ratio, not a duration
    ray = scaled_params("ray", {}, 10.0)
    assert ray["downscale_delay_s"] == 60.0
    assert ray["downscale_to_zero_delay_s"] < 0  # "same as downscale delay" stays a sentinel
