"""Faults of the serving processes, through the launcher (``python -m alpr.serving.server serve``) on the real server.

A step's process killed under load: the launcher restarts the server, readiness is false meanwhile, no answer is
wrong, and within 30 s every image is answered as before. A killed launcher takes its server and every step's process
with it; SIGTERM stops a server with a dead step within seconds. The probe sees what the ready endpoint does not.
Sixteen of the largest images at once are answered or refused for overload, with the server's memory bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from triton_requests import assert_same_plates
from tritonclient.utils import InferenceServerException

from alpr import spec
from alpr.client import Plate, PlateRecogniser, is_overload
from alpr.paths import repo_root
from alpr.serving import probe
from alpr.serving.server import Endpoints, StepProcess, free_ports, step_processes
from benchmarks.soak import CheckedLoad, process_family_pss_mib

RECOVERY_S = 30.0
# 16 images of 4096x4096 at once peaked at 3.1 GiB (PSS of the server and its steps) on a 2-core machine; the
# entry queue admits at most 64 requests (3 GiB of such images) and the rest is refused.
PRESSURE_MEMORY_BOUND_MIB = 8 * 1024
GONE_AFTER_KILL_S = 15.0
CONCURRENCY = 8


def wait_until(condition: Callable[[], bool], timeout_s: float, period_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period_s)
    return condition()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def is_ready(endpoints: Endpoints) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoints.http_url}/v2/health/ready", timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Launcher:
    process: subprocess.Popen[bytes]
    endpoints: Endpoints
    log: Path

    def server_pid(self) -> int:
        """The tritonserver the launcher runs now."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid and argv0.endswith(b"tritonserver"):
                    return int(entry.name)
        raise AssertionError(f"no tritonserver under the launcher:\n{self.log.read_text()[-3000:]}")

    def steps(self) -> list[StepProcess]:
        return step_processes(self.server_pid())


@contextlib.contextmanager
def launched(repository: Path, workdir: Path, *options: str) -> Iterator[Launcher]:
    """The launcher serving ``repository`` on free ports, ready; stopped (or killed) at the end."""
    http_port, grpc_port, metrics_port = free_ports(3)
    endpoints = Endpoints("127.0.0.1", http_port, grpc_port, metrics_port)
    log = workdir / "launcher.log"
    command = [sys.executable, "-m", "alpr.serving.server", "serve", "--repository", str(repository)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    command += ["--build-dir", str(workdir / "triton"), *options]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=repo_root(), stdout=output, stderr=subprocess.STDOUT)
    launcher = Launcher(process, endpoints, log)
    try:
        assert wait_until(lambda: is_ready(endpoints) or process.poll() is not None, 300), log.read_text()[-3000:]
        assert process.poll() is None, log.read_text()[-3000:]
        yield launcher
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def answers_as_before(url: str, images: list[np.ndarray], expected: list[list[Plate]]) -> bool:
    """Whether a new client gets every image's earlier answer (any error: not yet)."""
    try:
        with PlateRecogniser(url, timeout_s=20) as recogniser:
            for image, plates in zip(images, expected, strict=True):
                assert_same_plates(recogniser.recognise(image), plates)
    except (InferenceServerException, AssertionError):
        return False
    return True


def test_a_step_killed_under_load_is_restarted_and_no_answer_is_wrong(served_pipeline, test_images, tmp_path) -> None:
    images = test_images[::2]
    with launched(served_pipeline.repository, tmp_path) as launcher:
        url = launcher.endpoints.grpc_url
        with PlateRecogniser(url) as recogniser:
            expected = [recogniser.recognise(image) for image in images]
        first_steps = launcher.steps()
        (victim,) = [step for step in first_steps if step.instance.startswith("lprnet")][:1]
        # Every answer is checked against the image's sequential one; refusals while the step is dead or the server
        # restarts are no answers.
        load = CheckedLoad(url, images, expected, CONCURRENCY, timeout_s=30).start()
        try:
            assert wait_until(lambda: len(load.answers) >= CONCURRENCY, 120)
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            went_unready = wait_until(lambda: not is_ready(launcher.endpoints), 10, period_s=0.05)
            unready_s = time.monotonic() - killed_at
            wait_until(lambda: is_ready(launcher.endpoints), RECOVERY_S, period_s=0.1)
            ready_at = time.monotonic()
            # Under the same load, every image is answered (as before: checked for every answer) by the new server.
            recovered = wait_until(lambda: len(load.answered_since(ready_at)) == len(images), RECOVERY_S, period_s=0.1)
            recovery_s = time.monotonic() - killed_at
            as_before = answers_as_before(url, images, expected)
            with urllib.request.urlopen(launcher.endpoints.metrics_url, timeout=5) as response:
                metrics = response.read().decode()
            restarted_steps = launcher.steps()
            # Whatever kills the launcher, SIGKILL included, ends its (restarted) server and every step's process,
            # also those busy with requests at that moment.
            family = [launcher.server_pid(), *(step.pid for step in restarted_steps)]
            launcher.process.kill()
            launcher.process.wait()
            all_gone = wait_until(lambda: not any(alive(pid) for pid in family), GONE_AFTER_KILL_S)
        finally:
            load.stop()
        log = launcher.log.read_text()
        timings = (
            f"unready after {unready_s:.1f} s, ready after {ready_at - killed_at:.1f} s, "
            f"every image answered after {recovery_s:.1f} s"
        )
        assert went_unready, "readiness stayed true after the step died"
        assert recovered and recovery_s <= RECOVERY_S, f"{timings}\n{log[-3000:]}"
        assert load.wrong_count == 0, load.wrong
        assert as_before, "a new client did not get every image's earlier answer"
        assert f"step process {victim.instance} (pid {victim.pid}) died" in log
        assert all(not alive(step.pid) for step in first_steps)
        assert f"{spec.RESTARTS_METRIC} 1" in metrics
        assert all_gone, [pid for pid in family if alive(pid)]


def test_the_probe_sees_a_dead_step_and_sigterm_still_stops_everything(served_pipeline, tmp_path) -> None:
    with launched(served_pipeline.repository, tmp_path, "--no-supervise") as launcher:
        http_url = launcher.endpoints.http_url
        assert probe.probe(http_url, timeout_s=30) == (True, "answered")
        family = [launcher.server_pid(), *(step.pid for step in launcher.steps())]
        (victim,) = [step for step in launcher.steps() if step.instance.startswith("crop")][:1]
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(victim.pid), 5)
        # The failure this guards against: the ready endpoint still answers 200, the pipeline answers nothing.
        assert is_ready(launcher.endpoints)
        healthy, why = probe.probe(http_url, timeout_s=30)
        assert not healthy and "not healthy" in why, why
        assert probe.main(["--url", http_url]) == 1

        launcher.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert launcher.process.wait(timeout=30) == 0
        assert wait_until(lambda: not any(alive(pid) for pid in family), 5)
        assert time.monotonic() - started < GONE_AFTER_KILL_S


def test_the_probe_fails_where_nothing_listens() -> None:
    (port,) = free_ports(1)
    healthy, why = probe.probe(f"127.0.0.1:{port}", timeout_s=2)
    assert not healthy and why.startswith("no answer")


def test_a_process_without_stubs_has_no_step_processes() -> None:
    assert step_processes(os.getpid()) == []


def test_sixteen_largest_images_at_once_are_answered_or_refused_within_bounded_memory(served_pipeline) -> None:
    """16 clients send a 4096x4096 image each at once: no crash, no other error, memory bounded and kept serving."""
    image = np.random.default_rng(11).integers(0, 256, (spec.MAX_IMAGE_SIDE, spec.MAX_IMAGE_SIDE, 3), dtype=np.uint8)
    outcomes: list[str] = []
    peak_mib, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_mib[0] = max(peak_mib[0], process_family_pss_mib(served_pipeline.server_pid))
            time.sleep(0.2)

    def client() -> None:
        with PlateRecogniser(served_pipeline.grpc_url, timeout_s=300) as recogniser:
            try:
                recogniser.recognise(image)
                outcomes.append("answered")
            except InferenceServerException as error:
                outcomes.append("refused" if is_overload(error) else str(error))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            for future in [pool.submit(client) for _ in range(16)]:
                future.result()
    finally:
        stop.set()
        sampler.join()
    assert set(outcomes) <= {"answered", "refused"}, outcomes
    assert outcomes.count("answered") >= 1
    assert alive(served_pipeline.server_pid) and step_processes(served_pipeline.server_pid)
    assert peak_mib[0] < PRESSURE_MEMORY_BOUND_MIB, f"peak {peak_mib[0]:.0f} MiB"
    with PlateRecogniser(served_pipeline.grpc_url) as recogniser:
        assert recogniser.recognise(np.full((480, 640, 3), 128, np.uint8)) == []
