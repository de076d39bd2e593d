"""Python client of the ``plate_recognition`` ensemble over gRPC, blocking and asyncio flavours.

>>> recognizer = PlateRecognizer("127.0.0.1:8001")
>>> for plate in recognizer.recognize(cv2.imread("car.jpg")):
...     print(plate.text, plate.text_score, plate.box)
"""

from __future__ import annotations

import asyncio
import time
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
OUTPUTS = ("boxes", "det_scores", "texts", "text_scores")
# The status of a request the server refused because its queues are full or it waited past the queue timeout.
OVERLOAD_STATUS = "StatusCode.UNAVAILABLE"
RETRY_BACKOFF_S = 0.1


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


def _request(image: np.ndarray, module: Any) -> tuple[list[Any], list[Any]]:
    tensor = module.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    return [tensor], [module.InferRequestedOutput(name) for name in OUTPUTS]


def is_overload(error: InferenceServerException) -> bool:
    """Whether the server refused the request for overload (worth retrying later), not for what it contained."""
    return error.status() == OVERLOAD_STATUS


def retry_delay(attempt: int) -> float:
    """Exponential backoff before resending a refused request: 0.1 s, 0.2 s, 0.4 s..."""
    return RETRY_BACKOFF_S * 2**attempt


def plates_from_result(result: Any) -> list[Plate]:
    """The plates of one ensemble answer (an ``InferResult`` of either client flavour)."""
    boxes, det_scores, texts, text_scores = (result.as_numpy(name) for name in OUTPUTS)
    return [
        Plate(
            box=tuple(float(v) for v in box),
            det_score=float(det_score),
            text=text.decode() if isinstance(text, bytes) else str(text),
            text_score=float(text_score),
        )
        for box, det_score, text, text_score in zip(boxes, det_scores, texts, text_scores, strict=True)
    ]


class _Recognizer:
    """Options and connection shared by the blocking and the asyncio client."""

    client_module: Any = grpcclient

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = spec.ENSEMBLE_NAME,
        timeout_s: float | None = None,
        retries: int = 0,
        convert: bool = False,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.convert = convert
        self.client = self.client_module.InferenceServerClient(url, channel_args=_channel_args())

    def _request(self, image: np.ndarray, convert: bool | None) -> tuple[list, list]:
        return _request(prepare_image(image, convert=self.convert if convert is None else convert), self.client_module)

    def _should_retry(self, error: InferenceServerException, attempt: int) -> bool:
        return attempt < self.retries and is_overload(error)


class PlateRecognizer(_Recognizer):
    """Blocking client: one ``recognize`` call is one request to the ensemble. Safe to share between threads.

    ``timeout_s`` bounds each call on the client side; ``retries`` is how many times a request that the server
    refused for overload is sent again, after an exponential backoff. ``convert`` accepts grayscale and BGRA images.
    """

    def recognize(self, image: np.ndarray, *, convert: bool | None = None) -> list[Plate]:
        """Plates found in a BGR ``image`` (uint8 HxWx3), best detector score first."""
        inputs, outputs = self._request(image, convert)
        for attempt in range(self.retries + 1):
            try:
                result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
                return plates_from_result(result)
            except InferenceServerException as error:
                if not self._should_retry(error, attempt):
                    raise
                time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PlateRecognizer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncPlateRecognizer(_Recognizer):
    """asyncio client (``tritonclient.grpc.aio``): many ``recognize`` calls may be in flight at once.

    Same options as ``PlateRecognizer``.
    """

    client_module = aioclient

    async def recognize(self, image: np.ndarray, *, convert: bool | None = None) -> list[Plate]:
        """Plates found in a BGR ``image`` (uint8 HxWx3), best detector score first."""
        inputs, outputs = self._request(image, convert)
        for attempt in range(self.retries + 1):
            try:
                result = await self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
                return plates_from_result(result)
            except InferenceServerException as error:
                if not self._should_retry(error, attempt):
                    raise
                await asyncio.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncPlateRecognizer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
