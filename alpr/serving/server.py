"""Launch the real Triton Inference Server on a model repository of this project.

``python -m alpr.serving.server serve --repository model_repository`` (or ``alpr-server serve ...``) runs
``tritonserver`` from PATH when it is installed (the official image) and otherwise the build bundled in the
``nvidia-pytriton`` wheel. Before starting, it assembles
a backend directory under ``build/triton/backends``: the installation's own backends, the Python backend completed
with the stub for the running Python when the bundled build ships it apart, and the project's Python-based backend
``onnxruntime_python`` (``alpr/serving/steps/onnxruntime_python.py``) that serves each ONNX step on the CPU target.

``TritonServer`` is the context manager used by the tests, the benchmarks and the command line. The server dies with
the process that started it (``PR_SET_PDEATHSIG``), even when that process is killed with SIGKILL. The command line
also supervises it: when a step's process (a Python-backend stub) or the server itself dies, it restarts the server
on the same ports, so that readiness is false while the pipeline cannot answer and the service heals by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import filecmp
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from alpr import spec
from alpr.serving.steps import step_source
from alpr.spec import RESTARTS_VARIABLE

# Source of the Python-based backend that runs any ONNX step through onnxruntime.
ONNXRUNTIME_PYTHON_SOURCE = step_source(spec.ONNXRUNTIME_PYTHON_BACKEND)
DEFAULT_BUILD_DIR = Path("build") / "triton"

# Each Python-backend instance exchanges tensors with the server through its own shared-memory region. Start it
# large enough for a 1920x1080 BGR frame plus the letterboxed copy, and grow it in the same steps for bigger images.
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 16 * 1024 * 1024
# Seconds the server waits for requests in flight when asked to stop, and the launcher for the server after that.
EXIT_TIMEOUT_S = 5
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 6000
# How often the launcher looks at the server's processes, and the restarts in a row it tries before giving up.
SUPERVISE_PERIOD_S = 0.5
MAX_FAILED_RESTARTS = 3
STUB_EXECUTABLE = "triton_python_backend_stub"
# The Python backend's shared-memory regions are /dev/shm/triton_<backend>_shm_region_<uuid>.
SHM_REGION_MARK = "python_backend_shm_region_"
STALE_SHM_AGE_S = 30.0
PR_SET_PDEATHSIG = 1


class TritonNotFoundError(RuntimeError):
    """Neither ``tritonserver`` on PATH nor the build bundled in ``nvidia-pytriton`` is installed."""


class TritonStartError(RuntimeError):
    """The server exited or did not become ready in time; the message carries the end of its log."""


@dataclass(frozen=True)
class TritonInstallation:
    """Where a Triton build keeps its executable, backends and shared libraries."""

    executable: Path
    backend_directory: Path
    # Shared libraries the bundled build and its Python stub load (None: the system already finds them).
    library_directory: Path | None = None
    # Python-backend stub for the running Python, when the build ships stubs apart from the backend.
    python_stub: Path | None = None


def find_installation() -> TritonInstallation:
    """The ``tritonserver`` on PATH if there is one, else the build bundled in ``nvidia-pytriton``."""
    on_path = shutil.which("tritonserver")
    if on_path:
        executable = Path(on_path).resolve()
        return TritonInstallation(executable=executable, backend_directory=executable.parents[1] / "backends")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonNotFoundError(
            "no tritonserver: install the serving extra (pip install -e '.[serve]', which brings nvidia-pytriton) "
            "or run inside the official tritonserver image"
        )
    bundle = Path(spec.origin).parent / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundle / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    executable = bundle / "bin" / "tritonserver"
    if not executable.is_file():
        raise TritonNotFoundError(f"nvidia-pytriton is installed but {executable} is missing")
    if not stub.is_file():
        raise TritonNotFoundError(f"nvidia-pytriton ships no Python-backend stub for Python {python_version}")
    return TritonInstallation(
        executable=executable,
        backend_directory=bundle / "backends",
        library_directory=bundle.parents[1] / "nvidia_pytriton.libs",
        python_stub=stub,
    )


def auto_target() -> str:
    """The target this machine serves best: tensorrt with a GPU and TensorRT, onnxruntime inside the official
    image (its native onnxruntime backend is installed), else cpu."""
    has_gpu = (
        shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0
    )
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None or shutil.which("trtexec") is not None
    if has_gpu and has_tensorrt:
        return "tensorrt"
    try:
        native_onnxruntime = (find_installation().backend_directory / "onnxruntime").is_dir()
    except TritonNotFoundError:
        native_onnxruntime = False
    return "onnxruntime" if native_onnxruntime else "cpu"


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return
    # Copy beside the target, then rename: a server already running from this directory never sees half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as staging:
        staging_path = Path(staging.name)
    shutil.copy2(source, staging_path)
    staging_path.replace(target)


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() and target.resolve() == source.resolve():
        return
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(source, target_is_directory=source.is_dir())


def prepare_backend_directory(installation: TritonInstallation, build_dir: Path) -> Path:
    """Assemble ``build_dir/backends``: the installation's backends plus ``onnxruntime_python``; returns its path.

    Nothing inside the installation is modified: backends are linked, and the Python backend is copied next to the
    stub it needs when the installation ships the stub apart.
    """
    backends = build_dir / "backends"
    backends.mkdir(parents=True, exist_ok=True)
    for backend in sorted(installation.backend_directory.iterdir()):
        if not backend.is_dir() or backend.name == "__pycache__":
            continue
        if backend.name == "python" and installation.python_stub is not None:
            python_backend = backends / "python"
            if python_backend.is_symlink():
                python_backend.unlink()
            python_backend.mkdir(exist_ok=True)
            for artifact in backend.iterdir():
                if artifact.is_file():
                    _copy_if_changed(artifact, python_backend / artifact.name)
            _copy_if_changed(installation.python_stub, python_backend / "triton_python_backend_stub")
        else:
            _link(backend, backends / backend.name)
    if ONNXRUNTIME_PYTHON_SOURCE.is_file():
        runner = backends / spec.ONNXRUNTIME_PYTHON_BACKEND
        runner.mkdir(exist_ok=True)
        _copy_if_changed(ONNXRUNTIME_PYTHON_SOURCE, runner / "model.py")
    return backends


def server_environment(installation: TritonInstallation) -> dict[str, str]:
    """Environment of the server: the running interpreter first on PATH, since every Python stub imports its packages.

    The stub embeds the first ``python3`` on PATH; the virtual environment of this process has numpy<2, onnxruntime
    and this package, which the steps import.
    """
    environment = dict(os.environ)
    interpreter_dir = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join([interpreter_dir, environment.get("PATH", "")])
    # The bundled libraries, and the interpreter's own libpython, which the Python stub links against: a Python
    # built outside the system packages (pyenv, conda) keeps it beside itself rather than in the system folders.
    libraries = [str(installation.library_directory)] if installation.library_directory is not None else []
    python_libdir = sysconfig.get_config_var("LIBDIR")
    if python_libdir and Path(python_libdir, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0").exists():
        libraries.append(python_libdir)
    if environment.get("LD_LIBRARY_PATH"):
        libraries.append(environment["LD_LIBRARY_PATH"])
    if libraries:
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    return environment


def _die_with_launcher() -> None:
    """Runs in the server's process before it executes: the kernel kills it when the launcher dies, however."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# The watchdog, a small process beside the server: when the process that started the server dies, however (SIGKILL
# included), the kernel sends the watchdog SIGTERM (PR_SET_PDEATHSIG), and it kills the server's whole process group.
# The server's own PR_SET_PDEATHSIG ends the server, but a Python-backend stub busy at that moment can outlive it,
# orphaned; the group holds the stubs too. The watchdog leaves by itself once the group is gone.
WATCHDOG = """
import ctypes, os, signal, sys, time
group, launcher = int(sys.argv[1]), int(sys.argv[2])
def end(signum, frame):
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    os._exit(0)
signal.signal(signal.SIGTERM, end)
signal.signal(signal.SIGINT, signal.SIG_IGN)
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != launcher:
    end(0, None)
while True:
    time.sleep(1.0)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        os._exit(0)
"""


@dataclass(frozen=True)
class StepProcess:
    """One Python-backend stub of a running server: the process that runs one instance of a step."""

    pid: int
    instance: str
    # The shared-memory region the stub and the server exchange tensors through (a file in /dev/shm).
    shm_region: str


def _parent_and_state(pid: str) -> tuple[int, str] | None:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def step_processes(server_pid: int) -> list[StepProcess]:
    """The live Python-backend stubs the server ``server_pid`` started (an exited, unreaped one is not live)."""
    steps = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        parent_and_state = _parent_and_state(entry.name)
        if parent_and_state is None or parent_and_state[0] != server_pid or parent_and_state[1] in "ZX":
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(STUB_EXECUTABLE.encode()):
            continue
        # The stub's arguments: model path, shm region, shm sizes, parent pid, backend path, IPC handle, instance.
        words = [word.decode(errors="replace") for word in argv]
        instance = words[8] if len(words) > 8 else "?"
        steps.append(StepProcess(int(entry.name), instance, words[2] if len(words) > 2 else ""))
    return sorted(steps, key=lambda step: step.instance)


def _mapped_shared_memory() -> set[str]:
    """Names of the /dev/shm files some live process of this user maps."""
    names: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            maps = (entry / "maps").read_text()
        except OSError:
            continue
        names.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0] for line in maps.splitlines() if "/dev/shm/" in line)
    return names


def remove_stale_shm_regions(min_age_s: float = STALE_SHM_AGE_S) -> list[str]:
    """Remove the Python-backend shared-memory regions of servers that were killed (no process maps them any more).

    A server killed with SIGKILL cannot remove its stubs' regions (16 MB or more each, held in memory). Only this
    user's regions older than ``min_age_s`` are considered, so a server starting right now keeps its own.
    """
    folder = Path("/dev/shm")
    if not folder.is_dir():
        return []
    now = time.time()
    candidates = []
    for region in folder.glob(f"triton_*{SHM_REGION_MARK}*"):
        with contextlib.suppress(OSError):
            status = region.stat()
            if status.st_uid == os.geteuid() and now - status.st_mtime >= min_age_s:
                candidates.append(region)
    if not candidates:
        return []
    mapped = _mapped_shared_memory()
    removed = []
    for region in candidates:
        if region.name not in mapped:
            region.unlink(missing_ok=True)
            removed.append(region.name)
    return removed


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now (held together while chosen, so never repeated)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


@dataclass(frozen=True)
class Endpoints:
    """Where a running server listens."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class TritonServer:
    """A ``tritonserver`` process serving one model repository, started on the given ports or on free ones.

    >>> with TritonServer("model_repository") as server:
    ...     PlateRecogniser(server.endpoints.grpc_url).recognise(image)

    With ``log_path=None`` the server writes to this process's terminal; otherwise to that file, whose end is quoted
    when the server fails to start.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        build_dir: str | Path = DEFAULT_BUILD_DIR,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 120.0,
        extra_args: tuple[str, ...] = (),
        environment: dict[str, str] | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        spare_http, spare_grpc, spare_metrics = free_ports(3, host)
        self.endpoints = Endpoints(
            host=host,
            http_port=http_port or spare_http,
            grpc_port=grpc_port or spare_grpc,
            metrics_port=metrics_port or spare_metrics,
        )
        self.build_dir = Path(build_dir).resolve()
        self.log_path = Path(log_path).resolve() if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args
        self.environment = dict(environment or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        # The steps' processes as they were when the server became ready.
        self.steps: list[StepProcess] = []

    def command(self, installation: TritonInstallation, backend_directory: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        return [
            str(installation.executable),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory}",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--http-address={self.endpoints.host}",
            f"--http-port={self.endpoints.http_port}",
            f"--grpc-address={self.endpoints.host}",
            f"--grpc-port={self.endpoints.grpc_port}",
            f"--metrics-address={self.endpoints.host}",
            f"--metrics-port={self.endpoints.metrics_port}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready; raises ``TritonStartError`` with its log otherwise."""
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        installation = find_installation()
        backend_directory = prepare_backend_directory(installation, self.build_dir)
        remove_stale_shm_regions()
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(installation, backend_directory),
                env={**server_environment(installation), **self.environment},
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                # Its own process group: a Ctrl-C in the terminal reaches this launcher, which stops the server and,
                # through the group, every stub it started.
                start_new_session=True,
                preexec_fn=_die_with_launcher,
            )
        finally:
            if output is not None:
                output.close()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHDOG, str(self.process.pid), str(os.getpid())],
            start_new_session=True,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.steps = step_processes(self.process.pid)
        return self

    def dead_steps(self) -> list[StepProcess]:
        """The steps' processes that were running when the server became ready and are gone now."""
        if self.process is None:
            return []
        live = {step.pid for step in step_processes(self.process.pid)}
        return [step for step in self.steps if step.pid not in live]

    def is_ready(self) -> bool:
        """Whether the server answers ready on its HTTP health endpoint."""
        url = f"http://{self.endpoints.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self) -> str:
        """The models that failed to load and the end of the server log (or a note when it goes to the terminal)."""
        if self.log_path is None or not self.log_path.is_file():
            return "(server log on the terminal)"
        log = self.log_path.read_text(errors="replace")
        failures = [line.strip() for line in log.splitlines() if "UNAVAILABLE" in line or line.startswith("error:")]
        summary = "\n".join(failures[-20:])
        return f"{summary}\n--- end of {self.log_path} ---\n{log[-LOG_TAIL_CHARS:]}"

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with status {self.process.returncode} while loading {self.repository}:\n"
                    f"{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonStartError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s on {self.repository}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ask the server to shut down (SIGTERM), wait up to ``timeout_s``, then kill what is left of its process group.

        A server whose step died can hang in its shutdown; its stubs can outlive it. Both end here, and the shared
        memory of stubs that were killed is removed.
        """
        if self.process is None:
            return None
        if self.process.poll() is None and timeout_s > 0:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()
        for step in self.steps:
            if step.shm_region and "/" not in step.shm_region:
                Path("/dev/shm", step.shm_region).unlink(missing_ok=True)
        return self.process.returncode

    def restart(self) -> TritonServer:
        """Kill the server, whatever state it is in, and start it again on the same ports.

        It is killed rather than asked to stop: with a step dead, a graceful stop only waits out the exit timeout for
        requests that cannot finish, and every request in flight fails either way.
        """
        self.stop(timeout_s=0)
        return self.start()

    def wait(self) -> int:
        """Block until the server exits; returns its exit status."""
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _log(message: str) -> None:
    print(f"alpr.serving.server: {message}", file=sys.stderr, flush=True)


def supervise(server: TritonServer, stopping: Callable[[], bool], period_s: float = SUPERVISE_PERIOD_S) -> int:
    """Keep ``server`` answering until ``stopping()``: restart it when a step's process or the server dies.

    A dead Python-backend stub is never restarted by the server itself, which then fails every request while its
    ready endpoints still answer 200. Restarting the whole server on the same ports makes readiness false until the
    pipeline answers again. Returns the server's exit status once asked to stop, or 1 when restarts keep failing.
    """
    failed_restarts = 0
    while not stopping():
        time.sleep(period_s)
        if stopping():
            break
        assert server.process is not None
        status = server.process.poll()
        dead = server.dead_steps() if status is None else []
        if status is None and not dead:
            continue
        if stopping():
            break
        cause = (
            f"tritonserver exited with status {status}"
            if status is not None
            else "step process " + ", ".join(f"{step.instance} (pid {step.pid})" for step in dead) + " died"
        )
        restarts = int(server.environment.get(RESTARTS_VARIABLE, "0")) + 1
        server.environment[RESTARTS_VARIABLE] = str(restarts)
        _log(f"{cause}; restarting the server on the same ports (restart {restarts})")
        try:
            server.restart()
        except (TritonStartError, OSError) as error:
            failed_restarts += 1
            _log(f"restart {restarts} failed ({failed_restarts} in a row): {error}")
            if failed_restarts >= MAX_FAILED_RESTARTS:
                return 1
            continue
        failed_restarts = 0
        _log(f"ready again after restart {restarts}")
    return server.stop() or 0


def _serve(args: argparse.Namespace) -> int:
    server = TritonServer(
        args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        build_dir=args.build_dir,
        startup_timeout_s=args.startup_timeout,
        environment={RESTARTS_VARIABLE: "0"},
    )
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        server.start()
    except (TritonStartError, TritonNotFoundError, FileNotFoundError) as error:
        _log(str(error))
        server.stop()
        return 1
    endpoints = server.endpoints
    print(
        f"Triton ready: gRPC {endpoints.grpc_url}  HTTP http://{endpoints.http_url}  metrics {endpoints.metrics_url}",
        flush=True,
    )
    if args.no_supervise:
        status = server.wait()
        server.stop()
        return 0 if stopping else status
    status = supervise(server, lambda: stopping)
    return 0 if stopping else status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alpr.serving.server", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository until Ctrl-C or SIGTERM")
    serve.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR, help="where the backend directory goes")
    serve.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    serve.add_argument(
        "--no-supervise", action="store_true", help="do not restart the server when a step's process or it dies"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
