"""Profile the gateway's warm hot path against the replica it fronts, in one run.

Starts Redis, mosquitto, a scaler and one gateway on the sim backend with one warm replica
that answers at once, then measures, direct to the replica (with its per-replica key) and
through the gateway: `wrk` on `POST .../v1/completions` with `max_tokens` 1 at c=4 and c=32,
and 32 concurrent 1,000-token streams (tokens per second, first token). With `--profile`
it records the gateway under `py-spy` during the wrk rows and prints where its time goes.

    PYTHONPATH=. python bench/profile_hot_path.py --out bench/out/hot [--profile] [--seconds 5]

Needs wrk (apt-get install wrk) and, for --profile, py-spy (pip install py-spy). Absolute
numbers depend on the machine; read the gateway against the direct row of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Stack, start_mosquitto, start_redis, wait_until

from wakegate.engines.sim_timing import SimTiming

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# As bench/gateway.py: room for every connection (a replica of 8 slots queued c=32 in the
# gateway while the direct row had the sim take all 32).
WARM = SimTiming(load_s=0.0, ttft_s=0.0, tps=100_000.0, batch=1024).args()
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.3f %.3f\\n", summary.requests,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""
# Where the gateway's samples go, by the first of these frames found in a stack.
CATEGORIES = [
    ("Redis calls (store.EXCHANGE)", ["Store.", "execute_command"]),
    ("call to the replica (aiohttp client)", ["generate (", "ClientSession._request"]),
    ("request body and its validation", ["read_json", "_parse (", "model_validate"]),
    ("metrics", ["metrics.py"]),
]


def wrk(
    url: str, token: str, body: str, connections: int, seconds: int, script: Path
) -> tuple[str, int]:
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n' + WRK_DONE
    )
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    assert m, out
    rate = int(m[1]) / seconds
    p50, p99 = float(m[3]), float(m[4])
    line = f"{rate:8.0f} req/s  errors {m[2]:>3}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
    return line, int(m[1])


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


async def streams(
    url: str, token: str, rounds: int, n: int = 32, tokens: int = 1000
) -> tuple[str, int]:
    """`rounds` times `n` concurrent streams of `tokens` tokens: tokens per second, the first
    tokens' p50 and max, and how many tokens came."""
    body = {"model": "sim-llm", "prompt": "hello", "max_tokens": tokens, "stream": True}
    headers = {"Authorization": f"Bearer {token}"}
    firsts: list[float] = []

    async def one(session: aiohttp.ClientSession) -> int:
        start, count = time.monotonic(), 0
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.startswith(b"data:") and b"[DONE]" not in line:
                    if not count:
                        firsts.append(time.monotonic() - start)
                    count += 1
        return count

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await one(session)
        firsts.clear()
        start = time.monotonic()
        counts = []
        for _ in range(rounds):
            counts += await asyncio.gather(*[one(session) for _ in range(n)])
        elapsed = time.monotonic() - start
    firsts.sort()
    line = (
        f"{sum(counts) / elapsed:8.0f} tokens/s  first token p50 "
        f"{firsts[len(firsts) // 2] * 1000:6.1f} ms  max {firsts[-1] * 1000:6.1f} ms"
    )
    return line, sum(counts)


def summarise(raw: Path) -> str:
    total, by_category, handler = 0, collections.Counter[str](), 0
    self_time = collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        handler += n if "tracked (" in stack else 0
        self_time[stack.split(";")[-1].split(" (")[0]] += n
        for name, marks in CATEGORIES:
            if any(m in stack for m in marks):
                by_category[name] += n
                break
    lines = [f"  {handler / total:6.1%}  the request handler, all of it"]
    lines += [f"  {by_category[name] / total:6.1%}  {name}" for name, _ in CATEGORIES]
    lines += ["  most self time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in self_time.most_common(6)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of 32 streams")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    redis_proc, redis_url = start_redis(args.out)
    mqtt_proc, mqtt_url = start_mosquitto(args.out)
    stack = Stack(
        args.out / "stack", redis_url + "/1", mqtt_url, backend="sim", log_level="warning"
    )
    stack.start()
    try:
        stack.create("hot", baseModel="sim-llm", minReplicas=1, customArgs=WARM)
        wait_until(lambda: stack.ready_replicas("hot") == 1, 60, "the warm replica")
        replica = next(iter(stack.registry("hot").values()))
        direct = (replica["url"].rstrip("/") + "/v1/completions", replica["key"])
        gateway = (stack.deploy_url("hot") + "/v1/completions", stack.token)
        body = json.dumps({"model": "sim-llm", "prompt": "hello there", "max_tokens": 1})
        script = args.out / "post.lua"
        assert stack.gateway.p is not None
        # CPU per request: less at the mercy of other work on the machine than requests per
        # second (which a busy box halves), so before/after pairs compare on it.
        gw_pids = [stack.gateway.p.pid, redis_proc.p.pid]
        # Warm up first: a fresh stack's first seconds (its caches filling, the start-up
        # garbage collected, the scaler's first passes) were the c=4 row's p99.
        wrk(*direct, body, 4, 1, script)
        wrk(*gateway, body, 4, 2, script)
        for c in (4, 32):
            print(f"c={c:<2} direct   {wrk(*direct, body, c, args.seconds, script)[0]}", flush=True)
            recorder = None
            if args.profile:
                raw = args.out / f"gateway-c{c}.txt"
                recorder = subprocess.Popen(
                    [spy, "record", "-p", str(stack.gateway.p.pid), "-o", str(raw), "-f", "raw",
                     "-d", str(args.seconds), "-r", "200"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            before = [cpu_s([pid]) for pid in gw_pids]
            line, n = wrk(*gateway, body, c, args.seconds, script)
            pairs = zip(gw_pids, before, strict=True)
            used = [(cpu_s([pid]) - b) * 1e6 / max(n, 1) for pid, b in pairs]
            print(f"c={c:<2} gateway  {line}  CPU per request: gateway {used[0]:.0f} us, "
                  f"Redis {used[1]:.0f} us", flush=True)  # fmt: skip
            if recorder is not None and recorder.wait() == 0:
                print(summarise(args.out / f"gateway-c{c}.txt"), flush=True)
        print(f"streams direct   {asyncio.run(streams(*direct, args.rounds))[0]}", flush=True)
        recorder = None
        if args.profile:
            raw = args.out / "gateway-streams.txt"
            recorder = subprocess.Popen(
                [spy, "record", "-p", str(stack.gateway.p.pid), "-o", str(raw), "-f", "raw",
                 "-d", str(args.seconds), "-r", "200"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        before = [cpu_s([pid]) for pid in gw_pids]
        line, n = asyncio.run(streams(*gateway, args.rounds))
        used = (cpu_s([stack.gateway.p.pid]) - before[0]) * 1e6 / max(n, 1)
        print(f"streams gateway  {line}  CPU per token: gateway {used:.1f} us", flush=True)
        if recorder is not None and recorder.wait() == 0:
            print(summarise(args.out / "gateway-streams.txt"), flush=True)
    finally:
        stack.stop()
        mqtt_proc.stop()
        redis_proc.stop()


if __name__ == "__main__":
    main()
