"""The generated Triton repository: valid configs, one ensemble for all targets, consistent wiring, committed copy."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.paths import repo_root
from alpr.serving.repository import (
    GPU_CONCURRENT_EXECUTIONS,
    GPU_EXECUTIONS,
    TARGETS,
    decoder_step,
    graph_steps,
    image_decoder_step,
    model_file_name,
    repository_files,
    write_repository,
)
from alpr.serving.steps import step_source

COMMITTED_REPOSITORY = repo_root() / "model_repository"


def parsed_configs(
    target: str, max_plates: int = spec.MAX_PLATES, tile_grid: int = spec.TILE_GRID
) -> dict[str, mc.ModelConfig]:
    configs = {}
    for path, text in repository_files(target, max_plates, tile_grid).items():
        if path.endswith("/config.pbtxt"):
            configs[path.split("/")[0]] = text_format.Parse(text, mc.ModelConfig())
    return configs


@pytest.mark.parametrize("target", TARGETS)
def test_configs_parse_and_name_their_directory(target: str) -> None:
    configs = parsed_configs(target)
    steps = {"image_decoder", "preprocess", "detector", "crop", "stn", "lprnet", "ctc_decoder"}
    assert set(configs) == {spec.ENSEMBLE_NAME, spec.ENCODED_ENSEMBLE_NAME, *steps}
    for directory, config in configs.items():
        assert config.name == directory
        assert config.platform or config.backend


@pytest.mark.parametrize("ensemble", [spec.ENSEMBLE_NAME, spec.ENCODED_ENSEMBLE_NAME])
def test_ensemble_config_is_byte_identical_on_every_target(ensemble: str) -> None:
    path = f"{ensemble}/config.pbtxt"
    texts = {target: repository_files(target)[path] for target in TARGETS}
    assert len(set(texts.values())) == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("encoded", [False, True], ids=["pixels", "encoded"])
def test_ensemble_wiring_matches_every_step(target: str, encoded: bool) -> None:
    configs = parsed_configs(target)
    ensemble = configs[spec.ENCODED_ENSEMBLE_NAME if encoded else spec.ENSEMBLE_NAME]
    available = {tensor.name for tensor in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {tensor.name for tensor in model.input}, step.model_name
        assert set(step.output_map) == {tensor.name for tensor in model.output}, step.model_name
        missing = set(step.input_map.values()) - available
        assert not missing, f"{step.model_name} reads {missing} before any step writes it"
        available |= set(step.output_map.values())
    assert {tensor.name for tensor in ensemble.output} <= available
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [
        *(["image_decoder"] if encoded else []),
        "preprocess",
        "detector",
        "crop",
        "stn",
        "lprnet",
        "ctc_decoder",
    ]


def test_ensemble_contract() -> None:
    ensemble = parsed_configs("cpu")[spec.ENSEMBLE_NAME]
    assert ensemble.max_batch_size == 0
    (image,) = ensemble.input
    assert (image.name, image.data_type, list(image.dims)) == ("image", mc.TYPE_UINT8, [-1, -1, 3])
    outputs = {tensor.name: (tensor.data_type, list(tensor.dims)) for tensor in ensemble.output}
    assert outputs == {
        "boxes": (mc.TYPE_FP32, [-1, 4]),
        "det_scores": (mc.TYPE_FP32, [-1]),
        "texts": (mc.TYPE_STRING, [-1]),
        "text_scores": (mc.TYPE_FP32, [-1]),
    }
    encoded = parsed_configs("cpu")[spec.ENCODED_ENSEMBLE_NAME]
    (file,) = encoded.input
    assert (file.name, file.data_type, list(file.dims)) == (spec.ENCODED_INPUT, mc.TYPE_STRING, [1])
    assert list(encoded.output) == list(ensemble.output)


@pytest.mark.parametrize("target", TARGETS)
def test_batching_steps_batch_dynamically_and_refuse_overload(target: str) -> None:
    configs = parsed_configs(target)
    for name in ("detector", "stn", "lprnet"):
        config = configs[name]
        assert config.max_batch_size > 0
        batching = config.dynamic_batching
        assert batching.max_queue_delay_microseconds > 0
        assert batching.preferred_batch_size
        assert max(batching.preferred_batch_size) <= config.max_batch_size
    for name in ("image_decoder", "preprocess", "detector", "stn", "lprnet"):
        policy = configs[name].dynamic_batching.default_queue_policy
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert policy.max_queue_size > 0
        assert policy.default_timeout_microseconds > 0
    # The crops of one image (at most K) must fit one batch of the recognisers.
    assert configs["stn"].max_batch_size >= spec.MAX_PLATES
    assert configs["lprnet"].max_batch_size >= spec.MAX_PLATES


def test_cpu_target_runs_graphs_in_the_shared_onnxruntime_runner_with_bounded_threads() -> None:
    configs = parsed_configs("cpu")
    for step in graph_steps():
        config = configs[step.name]
        assert all(group.kind == mc.ModelInstanceGroup.KIND_CPU for group in config.instance_group)
        if step.name == "preprocess":
            continue
        assert config.backend == "onnxruntime_python"
        assert config.default_model_filename == "model.onnx"
        assert config.parameters["intra_op_threads"].string_value == "1"


def test_cpu_target_draws_the_views_with_opencv_and_the_others_run_the_graph() -> None:
    cpu = repository_files("cpu")
    assert parsed_configs("cpu")["preprocess"].backend == "python"
    assert cpu["preprocess/1/model.py"] == step_source("letterbox").read_text()
    for target in ("onnxruntime", "tensorrt"):
        assert "preprocess/1/model.py" not in repository_files(target)
        assert parsed_configs(target)["preprocess"].backend != "python"


def test_onnxruntime_target_uses_the_native_platform() -> None:
    configs = parsed_configs("onnxruntime")
    for step in graph_steps():
        assert configs[step.name].platform == "onnxruntime_onnx"
        assert configs[step.name].parameters["intra_op_thread_count"].string_value == "1"


def test_tensorrt_target_runs_plans_on_gpu_instances() -> None:
    configs = parsed_configs("tensorrt")
    for step in graph_steps():
        config = configs[step.name]
        assert config.platform == "tensorrt_plan"
        assert config.default_model_filename == "model.plan"
        assert all(group.kind == mc.ModelInstanceGroup.KIND_GPU for group in config.instance_group)
    assert sum(group.count for group in configs["detector"].instance_group) >= 2


@pytest.mark.parametrize("target", TARGETS)
def test_decoder_is_the_same_python_step_on_every_target(target: str) -> None:
    config = parsed_configs(target)["ctc_decoder"]
    assert config.backend == "python"
    assert config.max_batch_size == 0
    assert repository_files(target)["ctc_decoder/1/model.py"] == repository_files("cpu")["ctc_decoder/1/model.py"]
    assert "import torch" not in repository_files(target)["ctc_decoder/1/model.py"]


def test_max_plates_flows_into_the_configs() -> None:
    configs = parsed_configs("cpu", max_plates=5)
    detector = {tensor.name: list(tensor.dims) for tensor in configs["detector"].output}
    assert detector["det_boxes"] == [5, 4]
    assert detector["det_scores"] == [5]
    crop = {tensor.name: list(tensor.dims) for tensor in configs["crop"].input}
    assert crop["det_boxes"] == [-1, 5, 4]
    assert crop["det_scores"] == [-1, 5]
    with pytest.raises(ValueError, match="max_plates"):
        graph_steps(spec.RECOGNISER_MAX_BATCH + 1)


@pytest.mark.parametrize(("tile_grid", "views"), [(1, 1), (2, 5), (3, 10)])
def test_tile_grid_flows_into_the_configs(tile_grid: int, views: int) -> None:
    configs = parsed_configs("cpu", tile_grid=tile_grid)
    # Up to V views: an image that fits the canvas gets the whole view alone.
    assert list(configs["preprocess"].output[0].dims) == [-1, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE]
    assert configs["preprocess"].parameters["tile_grid"].string_value == str(tile_grid)
    crop = {tensor.name: list(tensor.dims) for tensor in configs["crop"].input}
    assert crop["num_dets"] == [-1, 1] and crop["det_boxes"] == [-1, spec.MAX_PLATES, 4]
    detector = configs["detector"]
    assert detector.max_batch_size == spec.DETECTOR_IMAGES_PER_BATCH * views, "whole images' views per batch"
    assert list(detector.dynamic_batching.preferred_batch_size) == [2 * views, 4 * views]
    assert spec.tile_grid_of(views) == tile_grid
    with pytest.raises(ValueError, match="tile_grid"):
        graph_steps(tile_grid=0)


def test_committed_repository_is_the_generated_cpu_repository() -> None:
    # The committed repository holds the configs; the decoder's code and the model files are written by make engines.
    generated = {path: text for path, text in repository_files("cpu").items() if path.endswith(".pbtxt")}
    committed = {
        path.relative_to(COMMITTED_REPOSITORY).as_posix(): path.read_text()
        for path in COMMITTED_REPOSITORY.rglob("*.pbtxt")
    }
    regenerate = "regenerate it: python -m ensemble.build --target cpu --out model_repository"
    assert committed.keys() == generated.keys(), regenerate
    for path, text in generated.items():
        assert committed[path] == text, f"{path} differs from the generator; {regenerate}"


@pytest.mark.parametrize("target", ["cpu", "onnxruntime"])
def test_write_repository_copies_the_onnx_graphs(tmp_path, target: str) -> None:
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    for step in graph_steps():
        (onnx_dir / f"{step.name}.onnx").write_bytes(step.name.encode())
    out = write_repository(tmp_path / "repository", target, models_dir=onnx_dir)
    for step in graph_steps():
        graph = out / step.name / "1" / model_file_name(target)
        if step.name == "preprocess" and target == "cpu":  # OpenCV draws the views: no graph
            assert not graph.exists() and (out / step.name / "1" / "model.py").is_file()
            continue
        assert graph.read_bytes() == step.name.encode()
    assert (out / spec.ENSEMBLE_NAME / "1").is_dir()
    assert (out / decoder_step().name / "1" / "model.py").is_file()
    assert (out / image_decoder_step().name / "1" / "model.py").is_file()
    assert (out / spec.ENCODED_ENSEMBLE_NAME / "1").is_dir()


def test_write_repository_names_a_missing_graph(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"detector\.onnx"):
        write_repository(tmp_path / "repository", "cpu", models_dir=tmp_path)


def test_tensorrt_repository_takes_no_onnx_graphs(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"engines\.build"):
        write_repository(tmp_path / "repository", "tensorrt", models_dir=tmp_path)
    out = write_repository(tmp_path / "repository", "tensorrt")
    assert (out / "detector" / "config.pbtxt").is_file()
    assert not list(out.rglob("model.plan"))


def test_gpu_instances_take_turns_on_the_device_through_the_rate_limiter() -> None:
    entrypoint = (repo_root() / "deploy" / "entrypoint.sh").read_text()
    assert "--rate-limit=execution_count" in entrypoint
    assert f'gpu_executions="${{ALPR_GPU_CONCURRENT_EXECUTIONS:-{GPU_CONCURRENT_EXECUTIONS}}}"' in entrypoint
    for name, config in parsed_configs("tensorrt").items():
        for group in config.instance_group:
            if group.kind != mc.ModelInstanceGroup.KIND_GPU:
                continue
            resources = {resource.name: resource.count for resource in group.rate_limiter.resources}
            assert resources == {GPU_EXECUTIONS: 1}, name
    for config in parsed_configs("cpu").values():
        assert all(not group.HasField("rate_limiter") for group in config.instance_group), config.name
