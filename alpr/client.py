"""Python client of the ``plate_recognition`` ensemble over gRPC, blocking and asyncio flavours.

>>> recogniser = PlateRecogniser("127.0.0.1:8001")
>>> for plate in recogniser.recognise(cv2.imread("car.jpg")):
...     print(plate.text, plate.text_score, plate.box)

By default the image travels inside the gRPC request. With ``shared_memory="system"`` (POSIX shared memory) or
``"cuda"`` (CUDA IPC memory on GPU 0) the client copies it into a region registered with the server instead, which
saves serialising a 6 MB 1080p frame per request; the answers still come back in the gRPC response (they are small and
of variable size). The server only maps shared memory of clients on its own host (for system memory: sharing its
``/dev/shm``, i.e. the same IPC namespace; for CUDA memory: seeing the same GPU), so use it only next to the server.
Each request in flight holds its own region, sized for the largest image seen so far; ``close()`` unregisters and
frees them all.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from alpr import spec

DEFAULT_URL = "127.0.0.1:8001"
# The largest accepted image plus room for the request envelope; answers are a few hundred bytes per plate.
MAX_SEND_BYTES = spec.MAX_IMAGE_SIDE * spec.MAX_IMAGE_SIDE * 3 + (1 << 20)
MAX_RECEIVE_BYTES = 4 << 20
# The status of a request the server refused because its queues are full or it waited past the queue timeout.
OVERLOAD_STATUS = "StatusCode.UNAVAILABLE"
RETRY_BACKOFF_S = 0.1
SHARED_MEMORY_KINDS = ("none", "system", "cuda")
# Shared-memory regions grow in whole MiB up to the largest accepted image, so that slightly bigger images reuse them.
REGION_GRANULE_BYTES = 1 << 20
MAX_IMAGE_BYTES = spec.MAX_IMAGE_SIDE * spec.MAX_IMAGE_SIDE * 3
CUDA_DEVICE = 0


@dataclass(frozen=True)
class Plate:
    """One recognised plate: its box (x1, y1, x2, y2 in image pixels), detector score, text and text confidence."""

    box: tuple[float, float, float, float]
    det_score: float
    text: str
    text_score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, rounded to what the pipeline resolves."""
        plate = asdict(self)
        plate["box"] = [round(v, 2) for v in self.box]
        plate["det_score"] = round(self.det_score, 4)
        plate["text_score"] = round(self.text_score, 4)
        return plate


def prepare_image(image: np.ndarray, *, convert: bool = False) -> np.ndarray:
    """Check that ``image`` is what the service accepts (uint8 BGR HxWx3, sides in [MIN, MAX]_IMAGE_SIDE).

    With ``convert=True`` a grayscale (HxW or HxWx1) or BGRA (HxWx4) image is converted to BGR first; otherwise any
    other layout raises ``ValueError``. Returns a C-contiguous array.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255 BGR), got {image.dtype}")
    if convert:
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        hint = "" if convert else " (pass convert=True to accept grayscale or BGRA)"
        raise ValueError(f"image must be HxWx3 BGR, got shape {list(image.shape)}{hint}")
    height, width = image.shape[:2]
    if min(height, width) < spec.MIN_IMAGE_SIDE or max(height, width) > spec.MAX_IMAGE_SIDE:
        raise ValueError(
            f"image sides must lie in [{spec.MIN_IMAGE_SIDE}, {spec.MAX_IMAGE_SIDE}] pixels, got {height}x{width}"
        )
    return np.ascontiguousarray(image)


def _channel_args() -> list[tuple[str, int]]:
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
    ]


def _request(image: np.ndarray, module: Any, region: _Region | None = None) -> tuple[list[Any], list[Any]]:
    """The ensemble's inputs and outputs for ``image``, its bytes either in the request or in ``region``."""
    tensor = module.InferInput(spec.IMAGE_INPUT, list(image.shape), "UINT8")
    if region is None:
        tensor.set_data_from_numpy(image)
    else:
        tensor.set_shared_memory(region.name, image.nbytes)
    return [tensor], [module.InferRequestedOutput(name) for name in spec.OUTPUT_NAMES]


def is_overload(error: InferenceServerException) -> bool:
    """Whether the server refused the request for overload (worth retrying later), not for what it contained."""
    return error.status() == OVERLOAD_STATUS


def retry_delay(attempt: int) -> float:
    """Exponential backoff before resending a refused request: 0.1 s, 0.2 s, 0.4 s..."""
    return RETRY_BACKOFF_S * 2**attempt


def plates_from_result(result: Any) -> list[Plate]:
    """The plates of one ensemble answer (an ``InferResult`` of either client flavour)."""
    boxes, det_scores, texts, text_scores = (result.as_numpy(name) for name in spec.OUTPUT_NAMES)
    return [
        Plate(
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            det_score=float(det_score),
            text=text.decode() if isinstance(text, bytes) else str(text),
            text_score=float(text_score),
        )
        for box, det_score, text, text_score in zip(boxes, det_scores, texts, text_scores, strict=True)
    ]


def plates_agree(actual: list[Plate], expected: list[Plate], *, rtol: float = 1e-5, atol: float = 1e-3) -> bool:
    """The same texts, and boxes and scores within what dynamic batching changes in float32 arithmetic."""
    if [plate.text for plate in actual] != [plate.text for plate in expected]:
        return False
    fields = ("box", "det_score", "text_score")
    values = [([getattr(p, name) for p in actual], [getattr(p, name) for p in expected]) for name in fields]
    return all(np.allclose(mine, theirs, rtol=rtol, atol=atol) for mine, theirs in values)


class SharedMemoryError(RuntimeError):
    """The requested kind of shared memory cannot be used on this host."""


def _import_tritonclient_utility(name: str) -> Any:
    """``tritonclient.utils.<name>``, loaded only when used: it needs ``pkg_resources`` (setuptools < 81)."""
    with warnings.catch_warnings():
        # tritonclient locates its helper library through pkg_resources, which warns that it is deprecated.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        return importlib.import_module(f"tritonclient.utils.{name}")


class _SystemMemory:
    """POSIX shared memory: the server maps the region by its key when it shares this host's ``/dev/shm``."""

    def __init__(self) -> None:
        try:
            self.system_shm = _import_tritonclient_utility("shared_memory")
        except ImportError as error:
            raise SharedMemoryError(
                f"shared_memory='system' needs tritonclient's shared-memory utilities, which cannot be loaded: {error}"
            ) from error

    def create(self, name: str, byte_size: int) -> Any:
        return self.system_shm.create_shared_memory_region(name, f"/{name}", byte_size)

    def write(self, handle: Any, image: np.ndarray) -> None:
        self.system_shm.set_shared_memory_region(handle, [image])

    def destroy(self, handle: Any) -> None:
        self.system_shm.destroy_shared_memory_region(handle)

    def register(self, client: Any, region: _Region) -> Any:
        return client.register_system_shared_memory(region.name, f"/{region.name}", region.byte_size)

    def unregister(self, client: Any, region: _Region) -> Any:
        return client.unregister_system_shared_memory(region.name)


class _CudaMemory:
    """CUDA IPC memory on ``CUDA_DEVICE``: the server opens the region from its IPC handle on the same GPU."""

    def __init__(self) -> None:
        try:
            cuda_shm = _import_tritonclient_utility("cuda_shared_memory")
            from cuda import cudart
        except (ImportError, RuntimeError) as error:
            raise SharedMemoryError(
                "shared_memory='cuda' needs an NVIDIA GPU and the CUDA runtime with the 'cuda-python' package "
                f"(pip install 'tritonclient[cuda]'); it cannot be loaded here: {error}"
            ) from error
        status, device_count = cudart.cudaGetDeviceCount()
        if status != cudart.cudaError_t.cudaSuccess or device_count <= CUDA_DEVICE:
            raise SharedMemoryError(
                f"shared_memory='cuda' needs an NVIDIA GPU, but the CUDA runtime finds none ({status.name}); "
                "use shared_memory='system' or 'none'"
            )
        self.cuda_shm = cuda_shm

    def create(self, name: str, byte_size: int) -> Any:
        return self.cuda_shm.create_shared_memory_region(name, byte_size, CUDA_DEVICE)

    def write(self, handle: Any, image: np.ndarray) -> None:
        self.cuda_shm.set_shared_memory_region(handle, [image])

    def destroy(self, handle: Any) -> None:
        self.cuda_shm.destroy_shared_memory_region(handle)

    def register(self, client: Any, region: _Region) -> Any:
        raw_handle = self.cuda_shm.get_raw_handle(region.handle)
        return client.register_cuda_shared_memory(region.name, raw_handle, CUDA_DEVICE, region.byte_size)

    def unregister(self, client: Any, region: _Region) -> Any:
        return client.unregister_cuda_shared_memory(region.name)


def _shared_memory(kind: str) -> _SystemMemory | _CudaMemory | None:
    if kind not in SHARED_MEMORY_KINDS:
        raise ValueError(f"shared_memory must be one of {', '.join(SHARED_MEMORY_KINDS)}, got {kind!r}")
    if kind == "system":
        return _SystemMemory()
    if kind == "cuda":
        return _CudaMemory()
    return None


def region_byte_size(image_bytes: int) -> int:
    """Size of a region for an image of ``image_bytes``: whole MiB, at most the largest accepted image."""
    return min(-(-image_bytes // REGION_GRANULE_BYTES) * REGION_GRANULE_BYTES, MAX_IMAGE_BYTES)


@dataclass
class _Region:
    """One slot of the pool: a region name, and its local memory and server registration while they exist."""

    name: str
    handle: Any = None
    byte_size: int = 0
    registered: bool = False


class _RegionPool:
    """The shared-memory regions of one recogniser: one per request in flight, reused by later requests.

    Regions are created lazily, sized for the largest image seen so far; a free region too small for the next image
    is replaced by a bigger one under the same name. The lock makes taking and returning slots thread-safe; the
    server calls that (un)register a slot are made by the client flavour that leased it.
    """

    def __init__(self, memory: _SystemMemory | _CudaMemory) -> None:
        self.memory = memory
        self.prefix = f"alpr-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.byte_size = 0
        self.regions: list[_Region] = []
        self._numbers = itertools.count()
        self._free: list[_Region] = []
        self._lock = threading.Lock()

    def take(self, image_bytes: int) -> _Region:
        """A slot nobody else uses; the caller makes it ``fit`` the image and ``put``s it back."""
        with self._lock:
            self.byte_size = max(self.byte_size, region_byte_size(image_bytes))
            if self._free:
                return self._free.pop()
            region = _Region(f"{self.prefix}-{next(self._numbers)}")
            self.regions.append(region)
            return region

    def put(self, region: _Region) -> None:
        with self._lock:
            self._free.append(region)

    def allocate(self, region: _Region) -> None:
        """Create the slot's local memory at the pool's current size (the slot holds none and is unregistered)."""
        region.handle = self.memory.create(region.name, self.byte_size)
        region.byte_size = self.byte_size

    def free(self, region: _Region) -> None:
        """Destroy the slot's local memory, once the server no longer maps it."""
        if region.handle is not None:
            self.memory.destroy(region.handle)
            region.handle, region.byte_size = None, 0

    def free_all(self) -> None:
        """Destroy the local memory of every slot, even of those the server could not be told to unregister."""
        for region in self.regions:
            self.free(region)


def _encoded_request(data: bytes, module: Any) -> tuple[list[Any], list[Any]]:
    """The encoded ensemble's inputs and outputs for one image file's bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"an image file's bytes expected, got {type(data).__name__}")
    tensor = module.InferInput(spec.ENCODED_INPUT, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([bytes(data)], dtype=np.object_))
    return [tensor], [module.InferRequestedOutput(name) for name in spec.OUTPUT_NAMES]


class _Recogniser:
    """Options and connection shared by the blocking and the asyncio client."""

    client_module: Any = grpcclient

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = spec.ENSEMBLE_NAME,
        encoded_model: str = spec.ENCODED_ENSEMBLE_NAME,
        timeout_s: float | None = None,
        retries: int = 0,
        convert: bool = False,
        shared_memory: str = "none",
        priority: str = "live",
    ) -> None:
        if priority not in spec.PRIORITIES:
            raise ValueError(f"priority must be one of {sorted(spec.PRIORITIES)}, got {priority!r}")
        # Triton's level of every request this client sends: live frames are served ahead of backfill.
        self.priority = spec.PRIORITIES[priority]
        self.model = model
        self.encoded_model = encoded_model
        self.timeout_s = timeout_s
        self.retries = retries
        self.convert = convert
        memory = _shared_memory(shared_memory)
        self.shared_memory = shared_memory
        self.regions = _RegionPool(memory) if memory is not None else None
        self.client = self.client_module.InferenceServerClient(url, channel_args=_channel_args())

    def _prepare(self, image: np.ndarray, convert: bool | None) -> np.ndarray:
        return prepare_image(image, convert=self.convert if convert is None else convert)

    @staticmethod
    def _must_grow(region: _Region, image: np.ndarray) -> bool:
        return region.handle is not None and region.byte_size < image.nbytes

    def _should_retry(self, error: InferenceServerException, attempt: int) -> bool:
        return attempt < self.retries and is_overload(error)


class PlateRecogniser(_Recogniser):
    """Blocking client: one ``recognise`` call is one request to the ensemble. Safe to share between threads.

    ``timeout_s`` bounds each call on the client side; ``retries`` is how many times a request that the server
    refused for overload is sent again, after an exponential backoff. ``convert`` accepts grayscale and BGRA images.
    ``shared_memory`` (``"none"``, ``"system"`` or ``"cuda"``) sends the image through a shared-memory region instead
    of the request, only possible on the server's host (see the module docstring); each thread's call in flight uses
    its own region. ``"cuda"`` raises ``SharedMemoryError`` at once where there is no GPU or CUDA runtime.
    ``priority`` ``"live"`` (default) is served ahead of ``"backfill"`` at every step with a queue.
    """

    def recognise(self, image: np.ndarray, *, convert: bool | None = None) -> list[Plate]:
        """Plates found in a BGR ``image`` (uint8 HxWx3), best detector score first."""
        image = self._prepare(image, convert)
        if self.regions is None:
            return self._infer(*_request(image, grpcclient))
        region = self.regions.take(image.nbytes)
        try:
            self._fit(region, image)
            return self._infer(*_request(image, grpcclient, region))
        finally:
            self.regions.put(region)

    def recognise_file(self, data: bytes) -> list[Plate]:
        """Plates found in an encoded image file (JPEG, PNG, WebP, BMP, TIFF), decoded by the server.

        A camera's JPEG is 10-30 times smaller than its pixels: what to send over a real network.
        """
        return self._infer(*_encoded_request(data, grpcclient), model=self.encoded_model)

    def _fit(self, region: _Region, image: np.ndarray) -> None:
        """Make ``region`` large enough, registered, and holding ``image``."""
        assert self.regions is not None
        if self._must_grow(region, image):
            self._release(region)
        if region.handle is None:
            self.regions.allocate(region)
        if not region.registered:
            self.regions.memory.register(self.client, region)
            region.registered = True
        self.regions.memory.write(region.handle, image)

    def _release(self, region: _Region) -> None:
        assert self.regions is not None
        if region.registered:
            self.regions.memory.unregister(self.client, region)
            region.registered = False
        self.regions.free(region)

    def _infer(self, inputs: list[Any], outputs: list[Any], model: str | None = None) -> list[Plate]:
        for attempt in range(self.retries + 1):
            try:
                result = self.client.infer(
                    model or self.model, inputs, outputs=outputs, client_timeout=self.timeout_s, priority=self.priority
                )
                return plates_from_result(result)
            except InferenceServerException as error:
                if not self._should_retry(error, attempt):
                    raise
                time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Unregister and free the shared-memory regions, then close the connection."""
        try:
            for region in self.regions.regions if self.regions is not None else []:
                self._release(region)
        finally:
            if self.regions is not None:
                self.regions.free_all()
            self.client.close()

    def __enter__(self) -> PlateRecogniser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncPlateRecogniser(_Recogniser):
    """asyncio client (``tritonclient.grpc.aio``): many ``recognise`` calls may be in flight at once.

    Same options as ``PlateRecogniser``; with shared memory each call in flight takes its own region from a pool
    that grows to the most calls ever in flight at once, so bound the concurrency (as ``lpr --concurrency`` does).
    """

    client_module = aioclient

    async def recognise(self, image: np.ndarray, *, convert: bool | None = None) -> list[Plate]:
        """Plates found in a BGR ``image`` (uint8 HxWx3), best detector score first."""
        image = self._prepare(image, convert)
        if self.regions is None:
            return await self._infer(*_request(image, aioclient))
        region = self.regions.take(image.nbytes)
        try:
            await self._fit(region, image)
            return await self._infer(*_request(image, aioclient, region))
        finally:
            self.regions.put(region)

    async def recognise_file(self, data: bytes) -> list[Plate]:
        """Plates found in an encoded image file, decoded by the server (see ``PlateRecogniser.recognise_file``)."""
        return await self._infer(*_encoded_request(data, aioclient), model=self.encoded_model)

    async def _fit(self, region: _Region, image: np.ndarray) -> None:
        """Make ``region`` large enough, registered, and holding ``image``."""
        assert self.regions is not None
        if self._must_grow(region, image):
            await self._release(region)
        if region.handle is None:
            self.regions.allocate(region)
        if not region.registered:
            await self.regions.memory.register(self.client, region)
            region.registered = True
        self.regions.memory.write(region.handle, image)

    async def _release(self, region: _Region) -> None:
        assert self.regions is not None
        if region.registered:
            await self.regions.memory.unregister(self.client, region)
            region.registered = False
        self.regions.free(region)

    async def _infer(self, inputs: list[Any], outputs: list[Any], model: str | None = None) -> list[Plate]:
        for attempt in range(self.retries + 1):
            try:
                result = await self.client.infer(
                    model or self.model, inputs, outputs=outputs, client_timeout=self.timeout_s, priority=self.priority
                )
                return plates_from_result(result)
            except InferenceServerException as error:
                if not self._should_retry(error, attempt):
                    raise
                await asyncio.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Unregister and free the shared-memory regions, then close the connection."""
        try:
            for region in self.regions.regions if self.regions is not None else []:
                await self._release(region)
        finally:
            if self.regions is not None:
                self.regions.free_all()
            await self.client.close()

    async def __aenter__(self) -> AsyncPlateRecogniser:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
