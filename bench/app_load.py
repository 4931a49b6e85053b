"""Load test of the grounding demo: many concurrent API clients against one app process.

    python bench/app_load.py [--checkpoint DIR] [--clients 16] [--requests 10]
                             [--image examples/synthref_0000001.png] [--phrase "cyan circle"]
                             [--out bench/results/app_load.json]

Launches ``python app.py`` on a free port on 127.0.0.1 (serving the shipped default model
``simvg/weights/synthref-student``, or ``--checkpoint DIR`` when given; one of them must
exist), waits until it answers, then runs ``--clients`` gradio_client clients in parallel
threads, each sending ``--requests`` /ground requests (the image is uploaded every time, as a
browser would). Every request must be answered for every phrase (its boxes, or none: "no
match" is an answer of a model with several answers per phrase); the script exits 1 otherwise.

Prints and writes as JSON: latency p50/p95/max (ms, per request as a client sees it, queueing
included), throughput (requests/s over the whole run), the error count, the peak RSS of the
server process (sampled with psutil when installed, and the kernel's VmHWM high-water mark
from /proc at the end), the machine (CPU model, cores, load average) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "simvg" / "weights" / "synthref-student"
DEFAULT_IMAGE = ROOT / "examples" / "synthref_0000001.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_model() -> str:
    """The CPU's model name (simvg.benchmark.cpu_name's copy: this client-side script imports
    neither torch nor simvg)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set size of ``pid`` (VmHWM), in MiB; None if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RssSampler(threading.Thread):
    """Samples the server's RSS with psutil every ``interval`` seconds (if psutil is installed)."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb = pid, interval, None
        self._done = threading.Event()
        try:
            import psutil

            self.process = psutil.Process(pid)
        except ImportError:
            self.process = None

    def run(self) -> None:
        while self.process is not None and not self._done.is_set():
            try:
                rss = self.process.memory_info().rss / 2**20
            except Exception:  # the process ended
                return
            self.peak_mb = rss if self.peak_mb is None else max(self.peak_mb, rss)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/config", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"app.py did not answer on {url} within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.25)


def run_client(url: str, image: str, phrases: str, n_phrases: int, requests: int, start: threading.Barrier,
               downloads: str) -> tuple[list[float], list[str]]:  # fmt: skip
    """One client: ``requests`` sequential /ground calls; returns (latencies in ms, error messages)."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=downloads)
    except Exception:
        start.abort()  # release the others instead of leaving them at the barrier
        raise
    latencies, errors = [], []
    start.wait()
    for _ in range(requests):
        t0 = time.perf_counter()
        try:
            annotated, payload = client.predict(handle_file(image), phrases, api_name="/ground")
            if not Path(annotated).is_file() or len(payload["phrases"]) != n_phrases:
                raise RuntimeError(f"incomplete answer: {annotated!r}, {len(payload['phrases'])} phrases answered")
        except Exception as err:  # counted and reported, the run goes on
            errors.append(f"{type(err).__name__}: {err}")
        else:
            latencies.append(1000 * (time.perf_counter() - t0))
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the shipped student, if present)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=10, help="requests per client (default 10)")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="image to upload")
    parser.add_argument("--phrase", help="phrase(s), newline-separated (default: the image's first example phrase)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=180, help="seconds to wait for the app")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_load.json"), help="JSON output")
    args = parser.parse_args()

    if args.checkpoint is None and not DEFAULT_MODEL.is_dir():
        parser.error(f"the shipped model {DEFAULT_MODEL} is missing: pass --checkpoint DIR")
    image = Path(args.image).resolve()
    if not image.is_file():
        parser.error(f"--image {image}: no such file")
    if args.phrase is None:
        phrase_file = image.with_suffix(".txt")
        args.phrase = phrase_file.read_text().splitlines()[0] if phrase_file.is_file() else "the red circle"
    n_phrases = len([p for p in args.phrase.splitlines() if p.strip()])

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port)]
    if args.checkpoint:
        server_cmd += ["--checkpoint", str(Path(args.checkpoint).resolve())]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SIMVG_PORT", None)

    with tempfile.TemporaryDirectory(prefix="simvg-app-load-") as tmp:
        log = Path(tmp) / "app.log"
        t_launch = time.perf_counter()
        with log.open("w") as out:
            server = subprocess.Popen(server_cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = RssSampler(server.pid)
        sampler.start()
        try:
            wait_until_up(url, server, log, args.startup_timeout)
            startup_s = time.perf_counter() - t_launch
            load_before = os.getloadavg()
            barrier = threading.Barrier(args.clients + 1)
            with ThreadPoolExecutor(args.clients) as pool:
                futures = [pool.submit(run_client, url, str(image), args.phrase, n_phrases, args.requests, barrier, tmp)
                           for _ in range(args.clients)]  # fmt: skip
                barrier.wait(timeout=120)  # every client connected: start the clock
                t0 = time.perf_counter()
                outcomes = [f.result() for f in futures]
                wall_s = time.perf_counter() - t0
            load_after = os.getloadavg()
            hwm_mb = vm_hwm_mb(server.pid)
        finally:
            sampler.stop()
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    latencies = [ms for lat, _ in outcomes for ms in lat]
    errors = [e for _, errs in outcomes for e in errs]
    total = args.clients * args.requests
    peaks = [v for v in (sampler.peak_mb, hwm_mb) if v is not None]
    result = {
        "benchmark": "app_load",
        "command": shlex.join([sys.executable, *sys.argv]),
        "server_command": shlex.join(server_cmd),
        "machine": machine(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "model": args.checkpoint or str(DEFAULT_MODEL),
        "image": str(image),
        "phrases": args.phrase.splitlines(),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "requests": total,
        "answered": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "server_startup_s": round(startup_s, 2),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(latencies) / wall_s, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1) if latencies else None,
            "p95": round(percentile(latencies, 95), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
            "mean": round(sum(latencies) / len(latencies), 1) if latencies else None,
        },
        "server_peak_rss_mb": round(max(peaks), 1) if peaks else None,
        "server_peak_rss_sampled_mb": round(sampler.peak_mb, 1) if sampler.peak_mb is not None else None,
        "server_peak_rss_vmhwm_mb": round(hwm_mb, 1) if hwm_mb is not None else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    ok = result["answered"] == total and not errors
    if not ok:
        print(f"FAILED: {result['answered']}/{total} requests answered, {len(errors)} errors", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
