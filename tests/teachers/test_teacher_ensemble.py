"""Choice-level distillation from several teachers learns from their ensemble: the mean of their
distributions over the choices, from the teachers that measured them."""

from __future__ import annotations

import math

import pytest

from tinystudent.distill.data import ensemble_choice_logprobs
from tinystudent.distill.objective_spec import parse_experiment_objective
from tinystudent.experiments.config import Experiment
from tinystudent.experiments.stages.training import taught_by


def test_the_ensemble_is_the_mean_of_the_teachers_distributions():
    a = {"q1": [0.0, math.log(3)], "q2": [2.0, 2.0]}  # q1: 25% / 75%
    b = {"q1": [math.log(3) + 5.0, 5.0]}  # q1: 75% / 25%, scores shifted: only the distribution counts
    ensemble = ensemble_choice_logprobs({"a": a, "b": b})
    assert [math.exp(x) for x in ensemble["q1"]] == pytest.approx([0.5, 0.5])
    assert [math.exp(x) for x in ensemble["q2"]] == pytest.approx([0.5, 0.5])  # a alone scored q2


def test_choice_kd_all_learns_from_the_teachers_measured_here():
    experiment = Experiment.model_validate(
        {
            "name": "e",
            "task": {"name": "bioasq"},
            "teachers": [
                {"name": "paper", "backend": "imported", "reported_acc": 0.7, "reported_source": "a paper"},
                {"name": "small", "model": "m1"},
                {"name": "other", "model": "m2"},
            ],
            "students": [{"name": "s", "model": "m3"}],
        }
    )
    assert taught_by(experiment, parse_experiment_objective("choice_kd:all")) == ["small", "other"]
    assert taught_by(experiment, parse_experiment_objective("choice_kd:paper")) == ["paper"]
