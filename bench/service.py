"""Job-service benchmark: submission latency, enqueue-to-start latency, trivial-job throughput.

    .venv/bin/python bench/service.py                  # 50 clients x 40 submissions, 3 runs
    .venv/bin/python bench/service.py --api-workers 2 --out bench/results/service-2api.md

Starts the API (`python -m service`) and one worker (`python -m worker`) as real processes on
the real Redis (REDIS_URL, default redis://127.0.0.1:6379/13) under a unique key prefix and
queue, all of which is deleted afterwards. The tiny random Llama (saved with the real SmolLM2
tokenizer) is the model of the trivial recipe: magnitude 50%, no perplexity.

1. Submission: `--clients` concurrent HTTP clients (one keep-alive connection each, on uvloop,
   back to back: closed loop) each POST `--per-client` jobs with no worker running, after two
   untimed submissions per connection; latency is per request, as the client sees it. CPU per
   submission is measured for the API processes and for the load generator.
2. Enqueue-to-start: one idle worker, jobs submitted one at a time; `started_at - created_at`
   from the job record (includes the fork of the job process and its imports).
3. Throughput: `--jobs` jobs submitted at once to one worker; jobs/s from the first
   `created_at` to the last `finished_at`.
The load generator runs on the same machine as the service and competes for its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"steps": [{"method": "magnitude", "sparsity": 0.5}],
          "evaluation": {"windows": 0}, "calibration": {"samples": 1, "seqlen": 64}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _tiny_model(folder: Path) -> Path:
    """A 2-block random Llama with the real tokenizer: jobs on it take about a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from compressors.assets import smollm2_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path(), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Service:
    """The API and worker processes plus their environment; cleans Redis on close."""

    def __init__(self, redis_url: str, root: Path, port: int) -> None:
        self.token = "bench" + uuid.uuid4().hex[:8]
        self.port = port
        self.env = {**os.environ, "COMPRESSORS_REDIS_URL": redis_url,
                    "COMPRESSORS_DATA_DIR": str(root / "data"),
                    "COMPRESSORS_MODELS_DIR": str(root / "models"),
                    "COMPRESSORS_KEY_PREFIX": self.token, "COMPRESSORS_QUEUE_NAME": self.token,
                    "COMPRESSORS_TORCH_THREADS": "1", "COMPRESSORS_DEVICE": "cpu",
                    "COMPRESSORS_PROGRESS_INTERVAL": "1", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
        self.procs: list[subprocess.Popen] = []
        self.log = (root / "service.log").open("wb")
        self.key = self._cli("keys", "create", "--name", "bench", "--admin").strip()

    def _cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "service", *args], env=self.env, cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout

    def start_api(self, workers: int) -> None:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), "--log-level", "warning",
             "--workers", str(workers)],
            env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.procs.append(self.api)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                time.sleep(2)  # every uvicorn worker up
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("API did not start")

    def start_worker(self) -> None:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "worker", "--name", f"{self.token}-w", "--log-level",
             "WARNING"], env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT))

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        from redis import Redis

        redis = Redis.from_url(self.env["COMPRESSORS_REDIS_URL"])
        doomed = list(redis.scan_iter(f"*{self.token}*"))
        job_ids = [k.decode().rsplit(":", 1)[1] for k in doomed if b":job:" in k]
        for job_id in job_ids:
            doomed += list(redis.scan_iter(f"rq:*{job_id}*"))
        for registry in ("rq:workers", "rq:queues"):
            for member in redis.smembers(registry):
                if self.token in member.decode():
                    redis.srem(registry, member)
        if doomed:
            redis.delete(*set(doomed))


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for the load generator.

    The load generator shares the service's 2 cores, so it should cost as little CPU as
    possible (like `wrk`): the request bytes are built once, and a response is read by its
    Content-Length. About 0.1 ms of CPU per request, against ~1 ms for an httpx.AsyncClient.
    """

    def __init__(self, port: int, key: str, body: bytes) -> None:
        self.port = port
        self.request = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                        ).encode() + body

    async def __aenter__(self) -> _Connection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def submit(self) -> int:
        """POST one job; returns the status code."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])


async def _client(connection: _Connection, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        began = time.perf_counter()
        code = await connection.submit()
        latencies.append(time.perf_counter() - began)
        if code != 202:
            raise RuntimeError(f"submission answered {code}")


async def _submit_all(port: int, key: str, clients: int, per_client: int,
                      latencies: list[float], warmup: int = 2) -> float:
    """Open every connection and let each submit `warmup` jobs (not timed), then all clients
    submit back to back; returns the timed wall seconds."""
    body = json.dumps({"model": "tiny", "recipe": RECIPE}).encode()
    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(_Connection(port, key, body))
                       for _ in range(clients)]
        await asyncio.gather(*(_client(c, warmup, []) for c in connections))
        began = time.perf_counter()
        await asyncio.gather(*(_client(c, per_client, latencies) for c in connections))
        return time.perf_counter() - began


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (the API's uvicorn workers)."""
    total = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        for proc in [process, *process.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def bench_submission(service: Service, clients: int, per_client: int) -> dict[str, Any]:
    uvloop.run(_submit_all(service.port, service.key, 2, 20, []))  # warm-up
    latencies: list[float] = []
    api_cpu, own_cpu = _cpu_seconds([service.api.pid]), time.process_time()
    wall = uvloop.run(_submit_all(service.port, service.key, clients, per_client, latencies))
    api_cpu = _cpu_seconds([service.api.pid]) - api_cpu
    own_cpu = time.process_time() - own_cpu
    n = len(latencies)
    return {"n": n, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * _percentile(latencies, 99), "max_ms": 1000 * max(latencies),
            "rps": n / wall, "api_cpu_ms": 1000 * api_cpu / n, "client_cpu_ms": 1000 * own_cpu / n}


def _drain(http: httpx.Client) -> None:
    """Cancel and delete every job (those left queued by the submission benchmark)."""
    while jobs := http.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]:
        for job in jobs:
            http.post(f"/api/v1/jobs/{job['id']}/cancel")
            http.delete(f"/api/v1/jobs/{job['id']}")


def _wait_finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        record = http.get(f"/api/v1/jobs/{job_id}").json()
        if record["state"] in ("succeeded", "failed", "cancelled"):
            if record["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {record['state']}: {record['error']}")
            return record
        time.sleep(0.05)


def bench_jobs(service: Service, sequential: int, burst: int) -> dict[str, Any]:
    http = httpx.Client(base_url=f"http://127.0.0.1:{service.port}",
                        headers={"X-API-Key": service.key}, timeout=60)
    while len(http.get("/api/v1/workers").json()["workers"]) == 0:
        time.sleep(0.2)
    _wait_finished(http, http.post("/api/v1/jobs", json={"model": "tiny", "recipe": RECIPE})
                   .json()["id"])  # warm-up: page cache, bundled files
    starts = []
    for _ in range(sequential):
        job_id = http.post("/api/v1/jobs", json={"model": "tiny", "recipe": RECIPE}).json()["id"]
        record = _wait_finished(http, job_id)
        starts.append(_ts(record["started_at"]) - _ts(record["created_at"]))
    ids = [http.post("/api/v1/jobs", json={"model": "tiny", "recipe": RECIPE}).json()["id"]
           for _ in range(burst)]
    records = [_wait_finished(http, job_id) for job_id in ids]
    span = max(_ts(r["finished_at"]) for r in records) - min(_ts(r["created_at"]) for r in records)
    return {"start_p50_s": statistics.median(starts), "start_max_s": max(starts),
            "burst": burst, "burst_s": span, "jobs_per_s": burst / span}


def table(runs: list[dict[str, Any]], jobs: dict[str, Any], args: argparse.Namespace) -> str:
    """One row per submission run plus their median, then the job-latency measures."""
    keys = ("p50_ms", "p99_ms", "max_ms", "rps", "api_cpu_ms", "client_cpu_ms")
    median = {k: statistics.median(run[k] for run in runs) for k in keys}

    def row(label: str, r: dict[str, Any]) -> str:
        return (f"| {label} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                f"{r['rps']:.0f} | {r['api_cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} |")

    lines = [
        f"{args.api_workers} API process(es); {args.clients} concurrent clients x "
        f"{args.per_client} submissions ({runs[0]['n']} requests) per run, {len(runs)} runs",
        "",
        "| run | p50 ms | p99 ms | max ms | submissions/s | API CPU ms/submission | "
        "load-generator CPU ms/submission |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[row(str(i + 1), run) for i, run in enumerate(runs)],
        row("median", median),
        "",
        "| job latency | value |",
        "| --- | --- |",
        f"| enqueue-to-start p50 ({args.sequential} sequential jobs, idle worker) | "
        f"{jobs['start_p50_s']:.3f} s |",
        f"| enqueue-to-start max | {jobs['start_max_s']:.3f} s |",
        f"| trivial jobs per second ({jobs['burst']} jobs at once, 1 worker) | "
        f"{jobs['jobs_per_s']:.3f} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="submission runs (median shown)")
    parser.add_argument("--sequential", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=1,
                        help="API processes (`python -m service --workers N`)")
    parser.add_argument("--port", type=int, default=18655)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/13"))
    parser.add_argument("--out", type=Path, help="also write the table, with the command, here")
    args = parser.parse_args()
    load = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    _tiny_model(root / "models" / "tiny")
    service = Service(args.redis_url, root, args.port)
    try:
        service.start_api(args.api_workers)
        http = httpx.Client(base_url=f"http://127.0.0.1:{args.port}",
                            headers={"X-API-Key": service.key}, timeout=60)
        runs = []
        for _ in range(args.repeat):
            runs.append(bench_submission(service, args.clients, args.per_client))
            _drain(http)
        service.start_worker()
        jobs = bench_jobs(service, args.sequential, args.jobs)
    finally:
        service.close()
        shutil.rmtree(root, ignore_errors=True)
    text = table(runs, jobs, args)
    print(text)
    if args.out:
        machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
                   f"{platform.python_version()}, {platform.system()} {platform.release()}")
        args.out.write_text(
            f"# Job service benchmark\n\n`.venv/bin/python bench/service.py "
            f"{' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f"\n\nMachine: {machine}; load average {load[0]:.1f} when it started; the load "
            "generator runs on the same cores as the API.\n\n" + text + "\n",
            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
