import pytest

from threedistill.core.schedule import evaluate_schedule, validate_schedule


def test_constant() -> None:
    assert evaluate_schedule(980, 10, 100) == 980.0


def test_points_interpolate_linearly_and_clamp() -> None:
    sched = [(0, 980), (100, 500)]
    assert evaluate_schedule(sched, 0, 300) == 980
    assert evaluate_schedule(sched, 50, 300) == pytest.approx(740)
    assert evaluate_schedule(sched, 250, 300) == 500


def test_fractional_steps_scale_with_run_length() -> None:
    sched = [(0.0, 980), (0.5, 500)]
    assert evaluate_schedule(sched, 100, 200) == pytest.approx(500)
    assert evaluate_schedule(sched, 50, 200) == pytest.approx(740)
    assert evaluate_schedule(sched, 50, 400) == pytest.approx(860)


def test_malformed_schedule() -> None:
    with pytest.raises(ValueError, match="max_step"):
        validate_schedule("max_step", [(0, 1, 2)])
