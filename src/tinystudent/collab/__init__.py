"""Small models working together instead of learning from a large teacher, and the
judging of what they answer together.

- `ensemble`: average of probabilities and majority vote over members' choice scores; a group's
  cost is the sum of its members' (`sum_costs`).
- `debate`: members read each other's answers and reasons for a fixed number of rounds, then vote.
- `results`: a group's answers as an `EvalResult`, judged and reported like any single model.
"""

from tinystudent.collab.debate import DebateResult, debate, debate_eval_result, vote
from tinystudent.collab.ensemble import (
    EnsembleResult,
    average_probabilities,
    choice_probabilities,
    majority_vote,
    sum_costs,
)
from tinystudent.collab.results import ensemble_eval_result

__all__ = [
    "DebateResult",
    "EnsembleResult",
    "average_probabilities",
    "choice_probabilities",
    "debate",
    "debate_eval_result",
    "ensemble_eval_result",
    "majority_vote",
    "sum_costs",
    "vote",
]
