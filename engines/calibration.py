"""INT8 entropy calibration of the detector and LPRNet plans.

TensorRT's entropy calibrator picks, per tensor, the int8 range that loses the least information on representative
inputs. The inputs here are what the two steps see in service: synthetic street scenes (``alpr.synth``) and real
photos, letterboxed by the ``preprocess`` graph for the detector, and their plates cropped by the ``crop`` graph and
rectified by the ``stn`` graph for LPRNet (all three graphs run in onnxruntime, so the calibration data is the
pipeline's own). Crops come from the scenes' true plate boxes, which need no trained detector.

Calibration runs once, where the development install (``alpr``, onnxruntime) and the TensorRT Python API meet on a
GPU machine; it writes ``<calibration-dir>/<model>.cache``. Those small files travel with the image
(``engines/calibration``), and every later int8 build replays them without images (``entropy_calibrator`` with
``batches=None``).

    python -m engines.build --onnx-dir build/onnx --repository R --precision int8 --calibrate
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alpr import spec

SYNTHETIC_SCENES = 512
CALIBRATION_SEED = 20240611
FRAME_SIZES = ((1080, 1920), (720, 1280), (480, 640), (1280, 720))


def entropy_calibrator(trt: object, cache: Path, batches: Iterator[dict[str, np.ndarray]] | None) -> object:
    """A ``trt.IInt8EntropyCalibrator2`` that feeds ``batches`` and writes ``cache``, or only replays ``cache``.

    Each batch maps every network input to an array of the calibration profile's optimum shape.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[attr-defined, misc]
        def __init__(self) -> None:
            super().__init__()
            self.batches = batches
            self.buffers: dict[str, object] = {}
            self.batch_size = 1

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches is None:
                return None
            batch = next(self.batches, None)
            if batch is None:
                return None
            from polygraphy import cuda

            pointers = []
            for name in names:
                host = np.ascontiguousarray(batch[name])
                self.batch_size = host.shape[0]
                if name not in self.buffers:
                    self.buffers[name] = cuda.DeviceArray(shape=host.shape, dtype=host.dtype)
                device = self.buffers[name]
                device.resize(host.shape)
                device.copy_from(host)
                pointers.append(int(device.ptr))
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            # With batches, calibrate afresh; without, the cache is all there is.
            return cache.read_bytes() if self.batches is None else None

        def write_calibration_cache(self, contents: object) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(contents))

    return EntropyCalibrator()


def calibration_images(
    extra: Sequence[Path] = (), count: int = SYNTHETIC_SCENES
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """BGR images with their plate boxes ``[P, 4]`` (original pixels): synthetic scenes, then ``extra`` photos.

    The photos come without boxes (they still calibrate the detector); ``labels.json`` beside them, in the format
    of the shared real-photo folder, supplies boxes where it names the file.
    """
    import json

    import cv2

    from alpr.synth.scenes import make_scene

    rng = np.random.default_rng(CALIBRATION_SEED)
    for index in range(count):
        height, width = FRAME_SIZES[index % len(FRAME_SIZES)]
        scene = make_scene(rng, height, width, num_plates=int(rng.integers(0, 5)))
        yield scene.image, np.asarray([plate.box_xyxy for plate in scene.plates], np.float32).reshape(-1, 4)
    for path in extra:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read an image from {path}")
        labels_path = path.parent / "labels.json"
        boxes = np.zeros((0, 4), np.float32)
        if labels_path.is_file():
            labels = json.loads(labels_path.read_text()).get(path.name, {})
            boxes = np.asarray([plate["box_xyxy"] for plate in labels.get("plates", [])], np.float32).reshape(-1, 4)
        yield image, boxes


class CalibrationBatches:
    """Batches of each calibrated step's input, made by the pipeline's own graphs in onnxruntime."""

    def __init__(self, onnx_dir: Path, images: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        import onnxruntime

        def session(name: str) -> onnxruntime.InferenceSession:
            return onnxruntime.InferenceSession(str(onnx_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])

        self.preprocess, self.crop, self.stn = session("preprocess"), session("crop"), session("stn")
        self.images = images

    def detector(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Letterboxed canvases ``[batch_size, 3, 640, 640]`` uint8: the images' views, whole image and tiles."""
        canvases = np.concatenate([self.preprocess.run(None, {"image": image})[0] for image, _ in self.images])
        for start in range(0, len(canvases) - batch_size + 1, batch_size):
            yield {"images": canvases[start : start + batch_size]}

    def lprnet(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Rectified plate crops ``[batch_size, 3, 24, 94]`` from the true boxes of the images."""
        from alpr.geometry import detections_for_boxes
        from alpr.views import views_tile_grid

        crops = []
        tile_grid = views_tile_grid(lambda image: self.preprocess.run(None, {spec.IMAGE_INPUT: image})[0])
        for image, boxes in self.images:
            if not len(boxes):
                continue
            height, width = image.shape[:2]
            detections = detections_for_boxes(boxes, height, width, spec.MAX_PLATES, score=1.0, tile_grid=tile_grid)
            feed = dict(zip(spec.step_inputs("crop"), (image, *detections), strict=True))
            crops.append(self.crop.run(None, feed)[0])
        rows = np.concatenate(crops) if crops else np.zeros((0, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH), np.float32)
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            (crops_input,), (lprnet_input,) = spec.step_inputs("stn"), spec.step_inputs("lprnet")
            yield {lprnet_input: self.stn.run(None, {crops_input: rows[start : start + batch_size]})[0]}
