"""HTTP serving latency and throughput: `llmesr serve` under a load generator on 127.0.0.1.

    python benchmarks/serving.py RUN_DIR DATA_DIR [--requests 1000] [--seconds 30]

Starts `llmesr serve RUN_DIR` as a separate process, then, with real histories (each user's
items before their test item, from DATA_DIR):

1. single requests, one at a time, k=10: latency p50 / p90 / p99 / max;
2. ``--clients`` (8) concurrent clients, each sending its next request as soon as the last
   answer came, for ``--seconds``: throughput (requests/s) and latency percentiles;

for three server settings, compared within one run: request batching (``--max-batch 256``,
the default) with one torch thread (the default) and with two, and batching off
(``--max-batch 1``: one history per forward pass) with one thread. The
clients are threads of this process with keep-alive connections; on a 2-core machine they
share the cores with the server, as a real co-located client would. JSON on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histories(data_dir: str, n: int, seed: int) -> list[list[str]]:
    from llmesr.data.artifact import load_dataset

    ds = load_dataset(data_dir)
    raw = ds.item_table["raw_id"].to_numpy()
    users = np.random.default_rng(seed).choice(ds.num_users, size=n, replace=True)
    return [raw[ds.sequence(int(u) + 1)[:-1] - 1].tolist() or raw[:1].tolist() for u in users]


class Server:
    def __init__(self, run_dir: str, max_batch: int, threads: int):
        self.port = _port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmesr.cli", "serve", run_dir, "--port", str(self.port),
             "--max-batch", str(max_batch), "--threads", str(threads), "--log-level",
             "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {self.proc.stderr.read().decode()}")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _post(conn: http.client.HTTPConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/recommend", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    dt = time.perf_counter() - t0
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {data[:200]!r}")
    return dt


def _summary(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"requests": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "mean_ms": round(float(a.mean()), 2)}


def single(port: int, bodies: list[bytes], warmup: int = 50) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for b in bodies[:warmup]:
        _post(conn, b)
    lat = [_post(conn, b) for b in bodies]
    conn.close()
    return _summary(lat)


def overhead(port: int, n: int = 500) -> dict[str, float]:
    """p50 of GET /health and of a recommendation whose only item is unknown (popularity
    fallback: validation, the worker hand-over and top-k, but no forward pass)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    health = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        health.append(time.perf_counter() - t0)
    body = json.dumps({"history": ["no-such-item"], "k": 10}).encode()
    fallback = [_post(conn, body) for _ in range(n)]
    conn.close()
    return {"health_p50_ms": round(float(np.median(health)) * 1000, 2),
            "unknown_only_p50_ms": round(float(np.median(fallback)) * 1000, 2)}


def in_process(run_dir: str, hs: list[list[str]], k: int, threads: int) -> dict[str, float]:
    """Recommender.recommend without HTTP, one history at a time."""
    import torch

    from llmesr.serving import Recommender

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rec = Recommender.load(run_dir)
    for h in hs[:50]:
        rec.recommend(h, k=k)
    lat = []
    for h in hs:
        t0 = time.perf_counter()
        rec.recommend(h, k=k)
        lat.append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    return {"threads": threads, **_summary(lat)}


def concurrent(port: int, bodies: list[bytes], clients: int, seconds: float
               ) -> dict[str, float]:
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = w
        start.wait()
        while not stop.is_set():
            lat[w].append(_post(conn, bodies[i % len(bodies)]))
            i += clients
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for xs in lat for x in xs]
    return {"clients": clients, "seconds": round(wall, 2),
            "throughput_rps": round(len(flat) / wall, 1), **_summary(flat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data", help="the run's dataset (for real histories)")
    ap.add_argument("--requests", type=int, default=1000, help="single requests (default 1000)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    hs = histories(args.data, max(args.requests, 2000), args.seed)
    bodies = [json.dumps({"history": h, "k": args.k}).encode() for h in hs]
    lengths = np.array([len(h) for h in hs])
    result = {"benchmark": "serving", "run": args.run, "k": args.k,
              "history_length": {"mean": round(float(lengths.mean()), 1),
                                 "p50": int(np.median(lengths)), "max": int(lengths.max())},
              "cpu_count": os.cpu_count()}
    for label, max_batch, threads in (("batching_1_thread", 256, 1),
                                      ("batching_2_threads", 256, 2),
                                      ("no_batching_1_thread", 1, 1)):
        server = Server(args.run, max_batch, threads)
        try:
            result[label] = {
                "max_batch": max_batch, "threads": threads,
                "single": single(server.port, bodies[:args.requests]),
                "concurrent": concurrent(server.port, bodies, args.clients, args.seconds),
                **({"overhead": overhead(server.port)} if threads == 1 and max_batch > 1
                   else {})}
        finally:
            server.close()
        print(f"{label}: {json.dumps(result[label])}", file=sys.stderr, flush=True)
    result["in_process"] = in_process(args.run, hs[:args.requests], args.k, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
