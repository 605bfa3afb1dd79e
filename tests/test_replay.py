"""`wakegate replay`: a short slice of a real trace through the real stack on the sim backend."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from harness import ROOT, wait_until

from wakegate.tools.replay.pool import plan_members
from wakegate.tools.replay.report import capacity_waits, percentile, replica_timeline
from wakegate.tools.replay.traces import (
    TraceRequest,
    load_trace,
    prompt_text,
    rotate,
    session_keys,
    split_trace,
    window,
)

TRACES = ROOT / "bench" / "traces"


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
    from wakegate.tools.replay.run import scaled_params

    knative = scaled_params("knative", {"stable_window_s": 120.0}, 10.0)
    assert knative["stable_window_s"] == 12.0
    assert knative["scale_to_zero_grace_s"] == 3.0  # default 30 s, compressed
    assert knative["panic_threshold"] == 2.0  # a ratio, not a duration
    ray = scaled_params("ray", {}, 10.0)
    assert ray["downscale_delay_s"] == 60.0
    assert ray["downscale_to_zero_delay_s"] < 0  # "same as downscale delay" stays a sentinel


def _at(i: int, *hash_ids: int) -> TraceRequest:
    """Request number i (it arrives at second i), with these prompt blocks."""
    return TraceRequest(float(i), 10, 1, hash_ids)


@pytest.mark.parametrize(
    ("trace", "parts", "expected"),
    [
        ([_at(i) for i in range(7)], 3, [[0, 3, 6], [1, 4], [2, 5]]),
        ([_at(i) for i in range(5)], 1, [[0, 1, 2, 3, 4]]),
        ([_at(i) for i in range(2)], 4, [[0], [1], [], []]),
        # Block 0 is in every prompt; the block after it names the conversation.
        (
            [_at(0, 0, 1, 2), _at(1, 0, 5), _at(2, 0, 1, 2, 3), _at(3, 0, 7), _at(4, 0, 5, 6)],
            2,
            [[0, 2, 3], [1, 4]],
        ),
        ([_at(0, 0, 1), _at(1, 0, 2), _at(2, 0)], 2, [[0, 2], [1]]),
        ([_at(i, 0, 1) for i in range(4)], 2, [[0, 2], [1, 3]]),
    ],
    ids=[
        "no-conversations-deals-request-by-request",
        "one-part-is-the-whole-trace",
        "more-parts-than-requests-leaves-some-empty",
        "a-conversation-follows-its-first-turn",
        "a-prompt-of-only-the-shared-prefix-goes-in-turn",
        "identical-prompts-are-no-conversation",
    ],
)
def test_trace_split_is_deterministic_and_deals_every_request_once(
    trace: list[TraceRequest], parts: int, expected: list[list[int]]
) -> None:
    split = split_trace(trace, parts)
    assert [[int(r.at_s) for r in part] for part in split] == expected
    assert split_trace(trace, parts) == split
    assert sorted((r for part in split for r in part), key=lambda r: r.at_s) == trace


def test_real_traces_split_evenly_and_keep_conversations_whole() -> None:
    mooncake = load_trace(TRACES / "mooncake_conversation.jsonl")
    parts = split_trace(mooncake, 4)
    assert sum(len(p) for p in parts) == len(mooncake)
    assert min(len(p) for p in parts) > 0.9 * len(mooncake) / 4
    owner: dict[int | None, int] = {}
    for i, part in enumerate(parts):
        for key in session_keys(part):
            assert owner.setdefault(key, i) == i, f"conversation {key} on two deployments"
    azure = load_trace(TRACES / "azure2023_code.csv")
    assert [len(p) for p in split_trace(azure, 4)] == [2205, 2205, 2205, 2204]


def test_a_rotated_trace_keeps_its_requests_at_other_times() -> None:
    trace = [_at(0), _at(3), _at(8), _at(10)]
    # Around the last request's time: the last and the first are one moment of a loop.
    assert [r.at_s for r in rotate(trace, 4)] == [2, 4, 4, 7]
    assert [r.at_s for r in rotate(trace, 4, period_s=12)] == [0, 2, 4, 7]
    assert rotate(trace, 0) == trace and rotate(trace, 10) == trace


def test_pool_deployments_are_named_in_their_tenants_with_staggered_parts() -> None:
    trace = [_at(0), _at(3), _at(8), _at(10)]
    members = plan_members(
        [("a.csv", trace), ("b.csv", trace)], per_trace=2, tenants="per-deployment",
        guaranteed=1, stagger_s=4,
    )  # fmt: skip
    assert [(m.key, m.trace_name, m.guaranteed) for m in members] == [
        ("t1/d1", "a.csv", True), ("t2/d2", "a.csv", False),
        ("t3/d3", "b.csv", False), ("t4/d4", "b.csv", False),
    ]  # fmt: skip
    assert [r.at_s for r in members[0].requests] == [0, 8]  # the first is not shifted
    # 3 and 10, 4 s later around the whole trace's span (10 s).
    assert [r.at_s for r in members[1].requests] == [4, 7]
    assert [r.at_s for r in members[2].requests] == [6, 8]  # 0 and 8, 8 s later
    shared = plan_members([("a.csv", trace)], per_trace=3, tenants="one")
    assert {m.tenant for m in shared} == {"shared"} and len({m.key for m in shared}) == 3


def _event(kind: str, t_s: float) -> dict[str, object]:
    return {"eventType": kind, "t_s": t_s}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([_event("Created", 0), _event("Ready", 0)], []),
        ([_event("WaitingForCapacity", 10), _event("CapacityAvailable", 25)], [(10, 25)]),
        ([_event("WaitingForCapacity", 90)], [(90, 100)]),
        (
            [
                _event("WaitingForCapacity", 5),
                _event("Reclaimed", 7),
                _event("CapacityAvailable", 8),
                _event("WaitingForCapacity", 50),
                _event("CapacityAvailable", 60),
            ],
            [(5, 8), (50, 60)],
        ),
        ([_event("CapacityAvailable", 3), _event("WaitingForCapacity", -2)], [(0, 3)]),
    ],
    ids=[
        "no-wait",
        "wait-ends-when-capacity-is-available",
        "a-wait-still-open-lasts-to-the-end",
        "two-waits",
        "clipped-to-the-run-and-read-in-time-order",
    ],
)
def test_capacity_waits_run_from_waiting_to_available(
    events: list[dict[str, object]], expected: list[tuple[float, float]]
) -> None:
    assert capacity_waits(events, 100.0) == expected


def test_deployments_share_one_pool_and_the_report_has_a_row_for_each(tmp_path: Path) -> None:
    """Two tenants' deployments on a one-GPU pool: one waits for the other's GPU, none fails."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "wakegate", "replay", str(TRACES / "azure2023_code.csv"),
         "--start-s", "240", "--end-s", "270", "--speed", "10", "--load-s", "5",
         "--deployments", "2", "--pool", "a10_24gb=1", "--max-replicas", "1",
         "--cooldown-s", "20", "--allocator", "fair", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"fair.json", "fair.md", "fair.png", "table.md"} <= {p.name for p in out.iterdir()}
    pool_rows, deployment_rows = (
        [line.split("|")[1:-1] for line in block.splitlines()[2:]]
        for block in (out / "table.md").read_text().split("\n\n")
    )
    assert [(r[0].strip(), r[1].strip(), r[7].strip()) for r in pool_rows] == [
        ("fair", "a10_24gb=1", "0")  # allocator, pool, failed
    ]
    assert [(r[1].strip(), r[5].strip()) for r in deployment_rows] == [
        ("t1/d1", "0"), ("t2/d2", "0")  # deployment, failed
    ]  # fmt: skip
    run = json.loads((out / "fair.json").read_text())
    expected = len(window(load_trace(TRACES / "azure2023_code.csv"), 240, 270))
    assert sum(len(rs) for rs in run["results"].values()) == expected
    for rs in run["results"].values():
        assert rs and all(r["ok"] for r in rs), [r for r in rs if not r["ok"]]
    assert {row["deployment"] for row in run["usage"]} == {"t1/d1", "t2/d2"}
    held = replica_timeline(run["usage"], run["horizon_s"])
    assert max(n for _, n in held) == 1, "never more GPUs than the pool has"
    kinds = {e["eventType"] for events in run["events"].values() for e in events}
    assert "WaitingForCapacity" in kinds, "one deployment waited for the other's GPU"


def _replay_args(*extra: str) -> list[str]:
    return ["replay", str(TRACES / "azure2023_code.csv"), "--start-s", "280", "--end-s", "300",
            "--speed", "10", "--load-s", "5", "--max-replicas", "1", *extra]  # fmt: skip


def test_what_out_needs_is_checked_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from wakegate.tools.cli import main

    out = tmp_path / "out"
    # Without matplotlib, --out (plots) is refused at once, naming the way out.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    refused = CliRunner().invoke(main, _replay_args("--out", str(out)))
    assert refused.exit_code == 2
    assert "matplotlib, which is not installed" in refused.stderr
    assert "--no-plots" in refused.stderr
    assert not out.exists() and "replaying" not in refused.output
    # A policy that cannot be warmed up is refused before the one before it runs.
    warm = CliRunner().invoke(
        main,
        _replay_args("--policy", "always-on", "--policy", "wakegate", "--warm", "--no-plots",
                     "--out", str(out)),
    )  # fmt: skip
    assert warm.exit_code == 2 and "--warm" in warm.stderr
    assert "replaying" not in warm.output and not list(out.iterdir())


def test_a_policy_run_reports_its_progress_in_trace_time_and_writes_as_it_ends(
    tmp_path: Path,
) -> None:
    from wakegate.tools.replay.policies import compare_policies
    from wakegate.tools.replay.run import REPLAY_ENGINE, Plan, Progress

    requests = window(load_trace(TRACES / "azure2023_code.csv"), 280, 300)
    plan = Plan("azure2023_code.csv", requests, speed=10, max_replicas=1, cooldown_s=20,
                engine=replace(REPLAY_ENGINE, load_s=5))  # fmt: skip
    seen: list[tuple[str, Progress]] = []
    out = tmp_path / "out"
    [summary] = compare_policies(
        [("wakegate", plan)], out, echo=lambda _: None,
        progress_for=lambda label: lambda p: seen.append((label, p)), plots=False,
    )  # fmt: skip
    assert summary.ok == len(requests)
    phases = [p.phase for _, p in seen]
    assert phases[0] == "starting" and phases[-1] == "done" and "replaying" in phases
    assert {label for label, _ in seen} == {"wakegate"}
    clock = [p.trace_s for _, p in seen if p.phase in ("replaying", "finishing")]
    assert clock == sorted(clock) and clock[-1] <= requests[-1].at_s
    assert seen[-1][1].done == seen[-1][1].total == len(requests)
    assert {p.name for p in out.iterdir()} == {"wakegate.json", "table.md"}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_comparison_keeps_the_runs_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wakegate",
         *_replay_args("--policy", "wakegate", "--policy", "always-on", "--no-plots",
                       "--out", str(out))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        # Ctrl-C as at a terminal, even where the suite runs with SIGINT ignored (a job a
        # shell started in the background): an ignored SIGINT is inherited, and Python
        # then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        table = out / "table.md"
        wait_until(lambda: table.exists() or proc.poll() is not None, 120, "the first run")
        # Ctrl-C while the second run goes on, and again until it stops (as a user would):
        # a stack's orderly shutdown ignores SIGINT by design.
        for _ in range(50):
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0, stdout + stderr  # it did not get to the end
    run = json.loads((out / "wakegate.json").read_text())
    assert run["plan"]["policy"] == "wakegate" and run["results"]
    rows = table.read_text().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["wakegate"]
    assert not (out / "always-on.json").exists()
