"""Start and stop a real OpenAI-compatible server (`landmark serve`) for tests and benchmarks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

_FINISHED = re.compile(r'^vllm:request_success_total\{engine="(\d+)"[^}]*\} (\S+)$', re.M)


def finished_per_engine(root_url: str) -> Counter[str]:
    """Requests each data-parallel engine of the server at ``root_url`` has finished so far
    (its Prometheus metrics, summed over finish reasons)."""
    text = httpx.get(root_url + "/metrics", timeout=60).text
    counts: Counter[str] = Counter()
    for engine, value in _FINISHED.findall(text):
        counts[engine] += int(float(value))
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`landmark serve MODEL ARGS` (or plain `vllm serve` with landmark=False) on a free port."""

    def __init__(
        self,
        model: Path | str,
        args: list[str] | None = None,
        *,
        landmark: bool = True,
        log_dir: Path | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        self.model = str(model)
        self.args = list(args or [])
        self.landmark = landmark
        self.port = free_port()
        self.log_path = Path(log_dir or ".") / f"server-{self.port}.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        bin_dir = Path(sys.executable).parent
        tool = "landmark" if self.landmark else "vllm"
        common = ["--port", str(self.port), "--host", "127.0.0.1", "--dtype", "float32"]
        return [str(bin_dir / tool), "serve", self.model, *common, *self.args]

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env["HF_HUB_OFFLINE"] = "1"
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = started + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    self.startup_seconds = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready after {self.startup_timeout} s:\n{self.log_tail()}")

    def landmark_metrics(self) -> dict[str, float]:
        """The server's ``vllm:landmark*`` samples from /metrics, keyed ``name`` or
        ``name{label=value,...}`` (labels sorted)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base_url.removesuffix("/v1") + "/metrics", timeout=30).text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("vllm:landmark"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return values

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
