"""The benchmark harness: inputs, the BLS baseline repository, the in-process floor, and one real perf_analyzer run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.serving.repository import graph_steps, write_repository
from alpr.serving.server import TritonServer
from benchmarks.baseline import BLS_MODEL_NAME, STEP_PREFIX, baseline_models, write_baseline_repository
from benchmarks.floor import floor_pipeline, measure_floor
from benchmarks.inputs import (
    MIXED_PLATE_COUNTS,
    MIXED_SIZES,
    SceneRequest,
    encoded_files,
    folder_images,
    mixed_scenes,
    plate_labels,
    read_images,
    read_input_data,
    write_encoded_input_data,
    write_input_data,
    write_scenes,
)
from benchmarks.perf_analyzer import (
    FALLBACK_MIN_REQUESTS_PER_SLOT,
    MeasurementSettings,
    fallback_request_count,
    measure,
    why_perf_analyzer_cannot_run,
)
from benchmarks.report import acceptance, write_report
from benchmarks.rounds import BLS, DETECTOR, ENCODED, ENSEMBLE, FLOOR, DesignRun, Round, Rounds, run_rounds
from benchmarks.run import compare_answers, composing_models, plates_read
from benchmarks.server_stats import read_counters, step_times
from benchmarks.soak import soak

# A short, lenient measurement: this checks that the harness works, not how fast anything is.
SMOKE_SETTINGS = MeasurementSettings(measurement_interval_ms=1000, stability_percentage=50, max_trials=4)
SMALL_SCENES = [SceneRequest(240, 320, 0), SceneRequest(360, 480, 2), SceneRequest(270, 480, 1)]


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three small synthetic scenes of different sizes."""
    return write_scenes(SMALL_SCENES, tmp_path_factory.mktemp("bench") / "images", seed=3)


@pytest.fixture(scope="module")
def served_repository(served_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository the test server serves, rebuilt from the same exported graphs."""
    return write_repository(tmp_path_factory.mktemp("bench") / "repository", "cpu", models_dir=served_pipeline.onnx_dir)


def test_mixed_scenes_cover_every_size_and_plate_count() -> None:
    scenes = mixed_scenes(len(MIXED_PLATE_COUNTS))
    for height, width in MIXED_SIZES:
        plates = sorted(scene.plates for scene in scenes if (scene.height, scene.width) == (height, width))
        assert plates == sorted(MIXED_PLATE_COUNTS)


def test_input_data_carries_each_image_with_its_own_shape(small_images: Path, tmp_path: Path) -> None:
    images = read_images(folder_images(small_images))
    assert sorted(item.image.shape for item in images) == sorted((s.height, s.width, 3) for s in SMALL_SCENES)
    data = write_input_data(images, tmp_path / "input.json")
    decoded = read_input_data(data)
    assert len(decoded) == len(images)
    for item, array in zip(images, decoded, strict=True):
        assert array.shape == item.image.shape
        np.testing.assert_array_equal(array, item.image)


def test_scenes_are_reproducible(tmp_path: Path) -> None:
    first = read_images(folder_images(write_scenes(SMALL_SCENES[:1], tmp_path / "a", seed=5)))
    second = read_images(folder_images(write_scenes(SMALL_SCENES[:1], tmp_path / "b", seed=5)))
    np.testing.assert_array_equal(first[0].image, second[0].image)


def test_unstable_level_is_remeasured_over_about_three_windows() -> None:
    output = "\n".join(
        f"  Pass [{index}] throughput: {value} infer/sec. Avg latency: 5000 usec (std 100 usec)."
        for index, value in enumerate([10.0, 30.0, 20.0], start=1)
    )
    # Median 20 requests/s over three 2-second windows.
    assert fallback_request_count(output, concurrency=4, measurement_interval_ms=2000) == 120
    # Slow levels still send a few requests per client; without any window, that floor is all it has.
    assert (
        fallback_request_count(output, concurrency=64, measurement_interval_ms=2000)
        == 64 * FALLBACK_MIN_REQUESTS_PER_SLOT
    )
    assert fallback_request_count("", concurrency=3, measurement_interval_ms=2000) == 3 * FALLBACK_MIN_REQUESTS_PER_SLOT


def fake_level(concurrency: int, throughput: float, p50_ms: float) -> dict[str, float]:
    """A measurement of one concurrency level with the fields the report reads."""
    return {
        "concurrency": concurrency,
        "throughput": throughput,
        "p50_ms": p50_ms,
        "p90_ms": 1.5 * p50_ms,
        "p95_ms": 1.8 * p50_ms,
        "p99_ms": 2 * p50_ms,
        "client_send_ms": 1.0,
        "average_ms": 1.2 * p50_ms,
        "stable": True,
    }


def fake_results() -> dict[str, object]:
    """Results of a run where the ensemble beats BLS 2x, reaches 60 % of the floor, and is 1.1x the floor's p50."""
    step = {
        "model": "detector",
        "requests": 10,
        "inferences_per_request": 1.0,
        "average_batch": 2.0,
        "request_ms": 20.0,
        "queue_ms": 5.0,
        "compute_input_ms": 1.0,
        "compute_infer_ms": 12.0,
        "compute_output_ms": 2.0,
        "busy_ms": 8.0,
    }
    return {
        "ensemble": [
            {"concurrency": 1, "measurement": fake_level(1, 20.0, 55.0), "steps": [step]},
            {"concurrency": 8, "measurement": fake_level(8, 60.0, 130.0), "steps": [step]},
            {"concurrency": 16, "measurement": None, "error": "Request timeout expired", "steps": [step]},
        ],
        "bls": [
            {"concurrency": 1, "measurement": fake_level(1, 15.0, 70.0)},
            {"concurrency": 8, "measurement": fake_level(8, 30.0, 260.0)},
        ],
        "floor": [fake_level(1, 22.0, 50.0), fake_level(8, 100.0, 80.0)],
        "ensemble_model": spec.ENSEMBLE_NAME,
        "bls_model": BLS_MODEL_NAME,
        "machine": {
            "cpu": "a CPU",
            "logical_cores": 2,
            "usable_cores": 2,
            "memory_gib": 1,
            "gpus": [],
            "os": "an OS",
            "versions": {"python": "3"},
        },
        "commit": "abc",
        "profile": "quick",
        "started": "now",
        "duration_s": 60.0,
        "graphs": {"detector": "0123"},
        "inputs": {"mixed": [{"name": "a.png", "size": "640x480"}], "plates_drawn": "0-4", "real": ""},
        "command": "python -m benchmarks.run --quick",
        "perf_commands": ["perf_analyzer -m plate_recognition"],
        "rounds": fake_rounds().to_dict(),
        "request_bytes": {"raw": 6_220_800.0, "encoded": 310_000.0},
        "sgemm_gflops": 180.0,
        "plates_read": {"images": 10, "labelled_plates": 20, "read": 15},
    }


def fake_rounds() -> Rounds:
    """Three rounds: the ensemble at 0.9, 0.95 and 1.0 of the floor; the BLS baseline failed in the second."""
    rounds = Rounds(8, [ENSEMBLE, ENCODED, BLS, FLOOR, DETECTOR])
    for index, ensemble in enumerate((9.0, 9.5, 10.0)):
        runs = {
            ENSEMBLE: DesignRun(ensemble, 800.0, 1500.0),
            ENCODED: DesignRun(ensemble * 0.97, 820.0, 1500.0),
            BLS: DesignRun(5.0) if index != 1 else DesignRun(None, error="Request timeout expired"),
            FLOOR: DesignRun(10.0),
            DETECTOR: DesignRun(12.0),
        }
        rounds.rounds.append(Round(runs, load_before=1.0 + index, load_after=1.5))
    return rounds


def test_rounds_give_each_rounds_ratio_its_median_and_spread() -> None:
    rounds = Rounds.from_dict(fake_rounds().to_dict())
    ratios = {ratio.name: ratio for ratio in rounds.ratios()}
    assert ratios["ensemble / floor"].values == pytest.approx((0.9, 0.95, 1.0))
    assert ratios["ensemble / floor"].median == pytest.approx(0.95)
    assert ratios["ensemble / floor"].spread == pytest.approx(0.1 / 0.95)
    # A round in which a design failed gives no value for its ratios, and is not counted as zero.
    assert ratios["ensemble / BLS"].values == pytest.approx((1.8, 2.0))
    assert ratios["image files / raw pixels"].median == pytest.approx(0.97)


def test_run_rounds_measures_every_design_once_per_round_in_order() -> None:
    calls: list[str] = []

    def design(name: str) -> Callable[[], DesignRun]:
        return lambda: calls.append(name) or DesignRun(1.0)

    rounds = run_rounds({ENSEMBLE: design("a"), BLS: design("b"), FLOOR: design("c")}, 8, 3)
    assert calls == ["a", "b", "c"] * 3
    assert len(rounds.rounds) == 3 and all(one.load_before >= 0 for one in rounds.rounds)


def test_acceptance_targets_say_which_are_missed_and_by_how_much() -> None:
    verdicts = {check["key"]: check for check in acceptance(fake_results())}
    assert verdicts["throughput_vs_bls"]["met"] is True
    assert verdicts["throughput_vs_bls"]["measured"] == pytest.approx(2.0)
    assert verdicts["throughput_vs_floor"]["met"] is False
    assert verdicts["throughput_vs_floor"]["shortfall"] == pytest.approx((0.75 - 0.6) / 0.75)
    assert verdicts["p50_vs_floor"]["met"] is True
    assert verdicts["p50_vs_floor"]["measured"] == pytest.approx(1.1)
    assert verdicts["rounds: ensemble / floor"]["met"] is True
    assert verdicts["rounds: ensemble / floor"]["measured"] == pytest.approx(0.95)
    assert verdicts["rounds: ensemble / detector alone"]["met"] is False
    assert verdicts["request_shrink"]["measured"] == pytest.approx(6_220_800 / 310_000)
    # The detector takes 8 of 8 ms busy time in the fake breakdown: preprocess is not in it.
    assert "preprocess_share" not in verdicts


def test_report_has_tables_plots_and_the_missed_target(tmp_path: Path) -> None:
    report = write_report(fake_results(), tmp_path / "RESULTS.md", tmp_path)
    text = report.read_text()
    assert "missed by 20 %" in text
    assert "| 8 | 60.0 |" in text
    # A level the server refused is reported as such, not dropped silently.
    assert "| 16 | Request timeout expired |" in text
    assert "## Interleaved rounds at concurrency 8" in text
    assert "| ensemble / floor | 0.90, 0.95, 1.00 | 0.95x | 10.5 % |" in text
    assert "180 GFLOP/s" in text
    # The ensemble's median 9.5 img/s x 1.5 plates read per image.
    assert "Plates read per second: 14.25" in text
    for plot in ("throughput.png", "latency.png", "step_breakdown.png"):
        assert (tmp_path / plot).stat().st_size > 0
        assert f"]({plot})" in text


def test_plates_read_needs_the_plate_found_and_its_text_exact() -> None:
    labels = {"a.png": [("A123BC77", [10, 10, 60, 25]), ("B456CE99", [100, 10, 150, 25])], "b.png": []}
    answers = {
        # The first plate found and read; the second found (centre inside) but misread.
        "a.png": (np.array([[12, 11, 58, 24], [110, 12, 130, 20]], np.float32), ["A123BC77", "B456CE90"]),
        # A box that is no labelled plate, with a text that is: not a read plate.
        "b.png": (np.array([[0, 0, 5, 5]], np.float32), ["A123BC77"]),
    }
    assert plates_read(answers, labels) == {"images": 2, "labelled_plates": 2, "read": 1}


def test_baseline_repository_is_the_product_without_batching(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for step in graph_steps():
        (models / f"{step.name}.onnx").write_bytes(step.name.encode())
    product = write_repository(tmp_path / "product", "cpu", models_dir=models)
    baseline = write_baseline_repository(product, tmp_path / "baseline")

    assert sorted(path.name for path in baseline.iterdir()) == sorted(baseline_models())
    for step in graph_steps():
        original = parse(product / step.name / "config.pbtxt")
        derived = parse(baseline / f"{STEP_PREFIX}{step.name}" / "config.pbtxt")
        assert derived.name == f"{STEP_PREFIX}{step.name}"
        assert not derived.HasField("dynamic_batching")
        assert [(group.kind, group.count) for group in derived.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
        assert derived.max_batch_size == original.max_batch_size
        assert derived.input == original.input and derived.output == original.output
        assert derived.backend == original.backend and derived.parameters == original.parameters
        # The same model file: the graph, or the Python code that draws the views.
        (served,) = (product / step.name / "1").iterdir()
        assert (baseline / derived.name / "1" / served.name).read_bytes() == served.read_bytes()

    ensemble = parse(product / spec.ENSEMBLE_NAME / "config.pbtxt")
    bls = parse(baseline / BLS_MODEL_NAME / "config.pbtxt")
    assert (bls.backend, bls.max_batch_size) == ("python", 0)
    assert not bls.HasField("dynamic_batching")
    assert bls.input == ensemble.input and bls.output == ensemble.output
    assert sum(group.count for group in bls.instance_group) == 1
    assert (baseline / BLS_MODEL_NAME / "1" / "model.py").is_file()


@pytest.mark.server
def test_floor_answers_like_the_server_and_measures(served_pipeline, served_repository, small_images, tmp_path):
    floor = floor_pipeline(served_repository, tmp_path / "graphs")
    images = read_images(folder_images(small_images))
    with grpcclient.InferenceServerClient(served_pipeline.grpc_url) as client:
        agreement, answers = compare_answers(client, images, floor, with_bls=False)
    assert agreement == {"ensemble = floor": True} and set(answers) == {item.name for item in images}
    read = plates_read(answers, plate_labels(small_images))
    assert read["labelled_plates"] == sum(scene.plates for scene in SMALL_SCENES) and read["images"] == len(images)
    measurement = measure_floor(floor, [item.image for item in images], 2, duration_s=0.3, warmup_s=0.1)
    assert measurement.requests >= 6
    assert measurement.throughput > 0
    assert 0 < measurement.p50_ms <= measurement.p90_ms <= measurement.p99_ms


@pytest.mark.server
def test_perf_analyzer_measures_the_served_ensemble(served_pipeline, served_repository, small_images, tmp_path):
    reason = why_perf_analyzer_cannot_run()
    if reason is not None:
        pytest.skip(f"perf_analyzer cannot run here: {reason}")
    input_data = write_input_data(read_images(folder_images(small_images)), tmp_path / "input.json")
    models = composing_models(served_repository)
    with grpcclient.InferenceServerClient(served_pipeline.grpc_url) as client:
        before = read_counters(client)
        measurement = measure(
            model=spec.ENSEMBLE_NAME,
            url=served_pipeline.grpc_url,
            input_data=input_data,
            concurrency=1,
            out_dir=tmp_path,
            settings=SMOKE_SETTINGS,
        )
        steps = {step.model: step for step in step_times(before, read_counters(client), models)}

    assert (tmp_path / f"{spec.ENSEMBLE_NAME}_c1.csv").is_file()
    assert measurement.concurrency == 1
    assert measurement.throughput > 0
    assert 0 < measurement.p50_ms <= measurement.p99_ms
    # Every step of the ensemble served each measured request, and the server says so.
    assert set(steps) == set(models)
    requests = steps[spec.ENSEMBLE_NAME].requests
    assert all(step.requests == requests for step in steps.values())
    assert steps["detector"].compute_infer_ms > 0
    assert steps["stn"].inferences_per_request >= 1


@pytest.mark.server
def test_perf_analyzer_sends_image_files_to_the_encoded_ensemble(served_pipeline, small_images, tmp_path):
    reason = why_perf_analyzer_cannot_run()
    if reason is not None:
        pytest.skip(f"perf_analyzer cannot run here: {reason}")
    images = read_images(folder_images(small_images))
    files = encoded_files(images, [])
    assert all(data[:2] == b"\xff\xd8" for data in files)  # JPEG
    input_data = write_encoded_input_data(files, tmp_path / "encoded.json")
    measurement = measure(
        model=spec.ENCODED_ENSEMBLE_NAME,
        url=served_pipeline.grpc_url,
        input_data=input_data,
        concurrency=1,
        out_dir=tmp_path,
        settings=SMOKE_SETTINGS,
    )
    assert measurement.throughput > 0


@pytest.mark.server
@pytest.mark.slow
def test_bls_baseline_serves_the_same_answers(served_pipeline, served_repository, small_images, tmp_path):
    baseline = write_baseline_repository(served_repository, tmp_path / "baseline")
    floor = floor_pipeline(served_repository, tmp_path / "graphs")
    images = read_images(folder_images(small_images))
    server = TritonServer(baseline, build_dir=tmp_path / "triton", log_path=tmp_path / "server.log")
    with server, grpcclient.InferenceServerClient(server.endpoints.grpc_url) as client:
        for item in images:
            tensor = grpcclient.InferInput("image", list(item.image.shape), "UINT8")
            tensor.set_data_from_numpy(item.image)
            answer = client.infer(BLS_MODEL_NAME, [tensor])
            expected = floor(item.image)
            np.testing.assert_allclose(answer.as_numpy("boxes"), expected.boxes, atol=1e-3)
            assert [text.decode() for text in answer.as_numpy("texts")] == expected.texts
        statistics = {model.name: model for model in client.get_inference_statistics().model_stats}
    # One BLS request drove each step once per image, without batching.
    for step in graph_steps():
        stats = statistics[STEP_PREFIX + step.name]
        assert stats.inference_stats.success.count == len(images)
        assert stats.execution_count == len(images)


def test_a_short_soak_at_concurrency_16_gets_no_wrong_answer(served_pipeline, test_images) -> None:
    # The server of the other tests: `make soak` runs the same for 30 minutes on a server of its own.
    summary = soak(served_pipeline.grpc_url, served_pipeline.server_pid, test_images[:6], 20.0, 16, sample_every_s=2)
    assert summary.answered >= 16, summary.lines()
    assert (summary.wrong, summary.errors, summary.crashed) == (0, 0, False), summary.first_wrong + summary.first_errors
    assert len(summary.memory_samples) >= 5 and summary.memory_start_mib > 0
