import itertools
import math

import pytest

from pytorch_pruner.schedules import DECAYS, Schedule

CHECK = {  # SPEC §6, S = 0.9, T = 10, c = 0..10
    "exp": [0, 0.2057, 0.3690, 0.4988, 0.6019, 0.6838, 0.7488, 0.8005, 0.8415, 0.8741, 0.9],
    "cos": [0, 0.0111, 0.0440, 0.0981, 0.1719, 0.2636, 0.3710, 0.4914, 0.6219, 0.7592, 0.9],
    "cube": [0, 0.0009, 0.0072, 0.0243, 0.0576, 0.1125, 0.1944, 0.3087, 0.4608, 0.6561, 0.9],
    "linear": [0.09 * c for c in range(11)],
}


def schedule(decay: str, start: int = 0, end: int = 100, freq: int = 10, final: float = 0.9) -> Schedule:
    return Schedule(start, end, freq, final, DECAYS.get(decay))


@pytest.mark.parametrize("decay", sorted(CHECK))
def test_spec_check_values(decay: str) -> None:
    s = schedule(decay)
    assert s.pruning_steps() == list(range(0, 101, 10))
    got = [s.sparsity_at(step) for step in s.pruning_steps()]
    assert got == pytest.approx(CHECK[decay], abs=5e-5)
    assert got[-1] == 0.9  # exactly, not approximately


@pytest.mark.parametrize("decay", DECAYS.names())
def test_every_registered_curve_starts_at_zero_ends_at_target_and_grows(decay: str) -> None:
    s = schedule(decay, final=0.73)
    values = [s.sparsity_at(step) for step in s.pruning_steps()]
    assert values[0] == 0.0
    assert values[-1] == 0.73
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_window_not_a_multiple_of_the_frequency_still_reaches_the_target() -> None:
    # INC v1 used T = (end - start + 1) // f and stopped at 0.8734 for this window.
    s = schedule("exp", start=0, end=99, freq=10)
    assert s.num_updates == 9
    assert s.pruning_steps()[-1] == 90
    assert s.sparsity_at(90) == 0.9
    assert s.sparsity_at(99) == 0.9


def test_window_shorter_than_the_frequency_prunes_at_start_and_end() -> None:
    s = schedule("linear", start=5, end=8, freq=100)
    assert s.pruning_steps() == [5, 8]
    assert [s.is_pruning_step(t) for t in range(4, 10)] == [False, True, False, False, True, False]
    assert s.sparsity_at(5) == 0.0
    assert s.sparsity_at(8) == 0.9


def test_one_shot() -> None:
    s = schedule("exp", start=7, end=7)
    assert s.one_shot
    assert s.pruning_steps() == [7]
    assert [s.is_pruning_step(t) for t in (6, 7, 8)] == [False, True, False]
    assert s.sparsity_at(6) == 0.0
    assert s.sparsity_at(7) == 0.9


def test_between_pruning_steps_the_last_value_holds() -> None:
    s = schedule("cos")
    assert s.sparsity_at(35) == s.sparsity_at(30)
    assert not s.is_pruning_step(35)
    assert s.sparsity_at(30) == pytest.approx(0.9 * (1 - math.cos(math.pi * 3 / 20)))
