"""Training code: the YOLOv5 objective, both trainers end to end on a few steps, resumption, and the metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alpr.metrics import DetectionTally, average_precision, box_iou, edit_distance, match_detections
from alpr.models import YOLOv5, load_detector, load_lprnet, load_stn
from alpr.train import common
from alpr.train import detector as detector_trainer
from alpr.train import recogniser as recogniser_trainer
from alpr.train.yolo_loss import YOLOv5Loss, bbox_ciou


def test_ciou_is_one_for_identical_boxes_and_lower_when_apart() -> None:
    box = torch.tensor([[10.0, 10.0, 4.0, 2.0]])
    assert torch.allclose(bbox_ciou(box, box), torch.ones(1), atol=1e-6)
    shifted = box + torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    assert bbox_ciou(box, shifted).item() < 0.5


def test_a_target_is_assigned_to_its_cell_and_the_two_nearest_neighbours() -> None:
    model = YOLOv5("n", num_classes=1).train()
    loss = YOLOv5Loss(model.head.anchors, model.stride, num_classes=1, image_size=256)
    maps = model(torch.zeros(1, 3, 256, 256))
    # A 40x10 plate centred at (100.3, 60.7) px; on the stride-8 grid the centre is (12.54, 7.59): cell (12, 7),
    # plus the neighbours towards the centre's nearer sides, x + 1 (0.54 >= 0.5 is not near the left) and y + 1.
    target = torch.tensor([[0, 0, 100.3, 60.7, 40.0, 10.0]])
    image_idx, anchor_idx, grid_y, grid_x, box, _ = loss._assign(0, maps[0], target)
    cells = {(int(x), int(y)) for x, y in zip(grid_x, grid_y, strict=True)}
    assert cells == {(12, 7), (13, 7), (12, 8)}
    assert torch.all(image_idx == 0)
    assert torch.all((box[:, :2] >= -0.5) & (box[:, :2] <= 1.5))
    assert len(set(anchor_idx.tolist())) >= 1


def test_the_objective_falls_when_fitting_one_batch() -> None:
    torch.manual_seed(0)
    model = YOLOv5("n", num_classes=1).train()
    criterion = YOLOv5Loss(model.head.anchors, model.stride, num_classes=1, image_size=128)
    images = torch.rand(2, 3, 128, 128)
    targets = torch.tensor([[0, 0, 40.0, 50.0, 36.0, 9.0], [1, 0, 90.0, 70.0, 50.0, 12.0]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, _ = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_detector_trainer_runs_resumes_and_writes_loadable_weights(tmp_path) -> None:
    args = detector_trainer.parse_args(
        ["--iterations", "2", "--batch-size", "2", "--tile-size", "128", "--workers", "0", "--save-every", "1",
         "--warmup", "1", "--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "detector.pt")]
    )  # fmt: skip
    report = detector_trainer.train(args)
    assert report["iterations"] == 2 and (tmp_path / "run" / "last.pt").exists()
    args.iterations, args.resume = 3, True
    assert detector_trainer.train(args)["iterations"] == 3
    trained = load_detector(tmp_path / "detector.pt")
    assert trained(torch.zeros(1, 3, 640, 640)).shape == (1, 25200, 6)


def test_the_weight_average_follows_the_weights_and_is_what_the_trainer_writes(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = common.WeightAverage(model, decay=0.9, ramp=1e-9)  # no ramp: the decay is 0.9 from the first step
    start = [value.clone() for value in average.model.state_dict().values()]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    average.update(model, step=1)
    weight = average.model[0].weight
    assert torch.allclose(weight, start[0] + 0.1) and not weight.requires_grad
    assert int(average.model[1].num_batches_tracked) == 5  # counters are copied, not averaged

    # The trainer writes the average, keeps it in last.pt and resumes it, also from a checkpoint without one.
    args = detector_trainer.parse_args(
        ["--iterations", "2", "--batch-size", "2", "--tile-size", "128", "--workers", "0", "--save-every", "1",
         "--warmup", "1", "--ema-decay", "0.5", "--run-dir", str(tmp_path / "run"),
         "--output", str(tmp_path / "detector.pt")]
    )  # fmt: skip
    detector_trainer.train(args)
    payload = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    written = load_detector(tmp_path / "detector.pt").state_dict()
    for key, value in payload["models"]["average"].items():
        assert torch.allclose(written[key].float(), value.float(), atol=1e-2, rtol=1e-2), key  # written in fp16
    assert any(
        not torch.equal(value, payload["models"]["detector"][key])
        for key, value in payload["models"]["average"].items()
    )
    del payload["models"]["average"]
    torch.save(payload, tmp_path / "run" / "last.pt")
    args.iterations, args.resume = 3, True
    assert detector_trainer.train(args)["iterations"] == 3


def test_a_box_keeps_its_label_through_a_window_only_where_most_of_it_shows() -> None:
    boxes = np.array([[110.0, 120.0, 150.0, 130.0], [190.0, 100.0, 230.0, 110.0], [170.0, 100.0, 210.0, 110.0]])
    kept = detector_trainer.visible_boxes(boxes, (100.0, 100.0, 200.0, 200.0))
    # Inside: shifted into the window. 25 % inside: dropped. 75 % inside: kept, clipped at the window's edge.
    assert kept == [(10.0, 20.0, 50.0, 30.0), (70.0, 0.0, 100.0, 10.0)]


def test_tile_views_show_the_plates_larger_than_the_whole_view(monkeypatch) -> None:
    # Frames larger than the canvas: only those get tiles, in serving as in training.
    monkeypatch.setattr(detector_trainer, "FRAME_SIZES", ((720, 1280, 1), (1080, 1920, 1)))

    def plate_widths(tile_views: float) -> np.ndarray:
        _, targets = detector_trainer.TrainingTiles(detector_trainer.SceneTiles(12, 640, tile_views), None, 0.0)(
            np.random.default_rng(8)
        )
        assert torch.all((targets[:, 2:4] >= 0) & (targets[:, 2:4] <= 640))
        return targets[:, 4].numpy()

    # A tile spans 1/1.8 of the frame on each side, so its letterbox enlarges the scene up to 1.8 times.
    assert np.median(plate_widths(1.0)) > 1.3 * np.median(plate_widths(0.0))


def test_recogniser_trainer_runs_and_writes_loadable_weights(tmp_path) -> None:
    args = recogniser_trainer.parse_args(
        ["--iterations", "2", "--batch-size", "4", "--workers", "0", "--validation-batches", "1", "--eval-every", "2",
         "--warmup", "1", "--run-dir", str(tmp_path / "run"), "--stn-output", str(tmp_path / "stn.pt"),
         "--lprnet-output", str(tmp_path / "lprnet.pt")]
    )  # fmt: skip
    report = recogniser_trainer.train(args)
    assert report["iterations"] == 2
    assert 0.0 <= report["validation"]["exact_match"] <= 1.0 and report["validation"]["plates"] == 128
    crops = torch.zeros(2, 3, 24, 94)
    assert load_lprnet(tmp_path / "lprnet.pt")(load_stn(tmp_path / "stn.pt")(crops)).shape == (2, 23, 18)


class FakeClock:
    """A ``time.perf_counter`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_warms_up_then_decays_over_its_steps(monkeypatch) -> None:
    monkeypatch.setattr(common.time, "perf_counter", FakeClock())
    state = common.TrainState()
    schedule = common.Schedule(state, iterations=100, base_lr=1e-3, warmup=10)
    assert schedule.lr() == pytest.approx(1e-4)  # step 1 of 10 of warm-up
    state.iteration = 10
    assert schedule.lr() == pytest.approx(1e-3) and not schedule.finished()
    state.iteration = 55  # half-way through the 90 steps of decay
    assert schedule.lr() == pytest.approx(1e-3 * 0.525)
    state.iteration = 100
    assert schedule.finished() and schedule.lr() == pytest.approx(5e-5)


def test_schedule_with_a_time_budget_decays_over_the_budget_and_counts_resumed_time(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    state = common.TrainState(iteration=50, seconds=20.0)  # resumed after 20 s of an 80 s budget
    schedule = common.Schedule(state, iterations=10**9, base_lr=1e-3, warmup=10, budget_s=80.0)
    clock.now += 20.0
    assert schedule.lr() == pytest.approx(1e-3 * 0.525) and not schedule.finished()
    clock.now += 40.0
    assert schedule.finished() and state.seconds == pytest.approx(80.0)


def slow_batches(count: int, delay_s: float):
    for index in range(count):
        time.sleep(delay_s)
        yield (torch.full((2,), float(index)),)


def test_replay_only_moves_batches_to_the_device_when_off() -> None:
    out = list(common.replayed(slow_batches(3, 0.0), torch.device("cpu"), max_ratio=1, capacity=4, seed=0))
    assert [(int(batch[0][0]), fresh) for batch, fresh in out] == [(0, True), (1, True), (2, True)]


def test_replay_repeats_recent_batches_while_rendering_lags_and_every_rendered_batch_comes_once() -> None:
    seen = list(common.replayed(slow_batches(4, 0.2), torch.device("cpu"), max_ratio=3, capacity=2, seed=0))
    assert any(not is_fresh for _, is_fresh in seen)
    fresh = [int(batch[0][0]) for batch, is_fresh in seen if is_fresh]
    assert fresh == [0, 1, 2, 3]
    repeats_in_a_row = 0
    last_fresh = -1
    for batch, is_fresh in seen:
        value = int(batch[0][0])
        if is_fresh:
            repeats_in_a_row, last_fresh = 0, value
        else:
            repeats_in_a_row += 1
            assert repeats_in_a_row <= 2 and last_fresh - 1 <= value <= last_fresh  # from the last `capacity`


def test_replay_surfaces_a_rendering_error() -> None:
    def broken():
        yield (torch.zeros(1),)
        raise ValueError("renderer broke")

    stream = common.replayed(broken(), torch.device("cpu"), max_ratio=2, capacity=4, seed=0)
    with pytest.raises(ValueError, match="renderer broke"):
        for _ in range(10):
            next(stream)


def test_recogniser_trainer_stops_at_its_time_budget_with_replay(tmp_path) -> None:
    args = recogniser_trainer.parse_args(
        ["--iterations", "100000", "--time-budget", "3", "--replay", "2", "--batch-size", "4", "--workers", "0",
         "--validation-batches", "1", "--warmup", "1", "--run-dir", str(tmp_path / "run"),
         "--stn-output", str(tmp_path / "stn.pt"), "--lprnet-output", str(tmp_path / "lprnet.pt")]
    )  # fmt: skip
    report = recogniser_trainer.train(args)
    assert 0 < report["iterations"] < 100000 and report["training_seconds"] >= 3.0
    assert 0 < report["fresh_batches"] <= report["iterations"]


def test_recogniser_trainer_with_worker_processes_does_not_deadlock(tmp_path) -> None:
    # Validation batches run torch ops before the workers start; forked workers could then hang forever.
    command = [sys.executable, "-m", "alpr.train.recogniser", "--iterations", "2", "--batch-size", "4",
               "--workers", "1", "--validation-batches", "1", "--warmup", "1", "--run-dir", str(tmp_path / "run"),
               "--stn-output", str(tmp_path / "stn.pt"), "--lprnet-output", str(tmp_path / "lprnet.pt")]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, capture_output=True, cwd=Path(__file__).parents[1])
    assert (tmp_path / "lprnet.pt").exists()


def test_plate_crops_are_normalised_with_targets_in_the_alphabet() -> None:
    crops, labels, lengths = recogniser_trainer.PlateCrops(6, crops_per_plate=2)(np.random.default_rng(3))
    assert crops.shape == (6, 3, 24, 94)
    assert crops.abs().max() <= 1.0
    assert int(lengths.sum()) == len(labels) and labels.max() < 22


def test_detection_metrics() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    predicted = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    hits, matched = match_detections(predicted, scores, truth)
    assert hits.tolist() == [True, False, True] and matched.tolist() == [0, 2]
    assert box_iou(truth[:1], truth[:1])[0, 0] == pytest.approx(1.0)
    # Ranked: hit, miss, hit -> precision envelope 1 up to recall 0.5, then 2/3 up to recall 1.
    assert average_precision(scores, hits, 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    tally = DetectionTally()
    tally.add(predicted, scores, truth)
    summary = tally.summary()
    assert summary["recall"] == 1.0 and summary["precision"] == pytest.approx(2 / 3)


def test_edit_distance() -> None:
    assert edit_distance("B840CK197", "B840CK197") == 0
    assert edit_distance("B840OK197", "B840CK197") == 1
    assert edit_distance("", "A001AA77") == 8
    assert edit_distance("A01AA77", "A001AA77") == 1
