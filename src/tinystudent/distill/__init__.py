"""Distillation: objectives, losses, the training loop, checkpoints and LoRA.

Public API:
    TrainConfig, ObjectiveWeights, LoraSettings: the run's typed config.
    train_student(student, train_examples, valid_examples, config, out_dir, rationales=None,
                  choice_logprobs=None, teacher=None, task="", test_examples=None) -> TrainResult
    train_mutual(students, train_examples, valid_examples, config, out_dir, task="",
                 test_examples=None) -> list[TrainResult]
    TrainResult, TrainingDiverged.
    RecoveryConfig and distill.recover.recover: a layer-cut student distilled from its parent on text.
    Losses: forward_kl, reverse_kl, generalized_jsd, token_divergence, choice_kd_loss, mutual_kl,
    hidden_state_loss, chunked_token_losses; check_vocab / VocabAlignment.
"""

from tinystudent.distill.config import LoraSettings, ObjectiveWeights, RecoveryConfig, TrainConfig
from tinystudent.distill.loop import TrainingDiverged
from tinystudent.distill.losses import (
    DIVERGENCES,
    choice_kd_loss,
    chunked_token_losses,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    mutual_kl,
    reverse_kl,
    token_divergence,
)
from tinystudent.distill.result import TrainResult
from tinystudent.distill.train import train_mutual, train_student
from tinystudent.distill.vocab import VocabAlignment, check_vocab

__all__ = [
    "DIVERGENCES",
    "LoraSettings",
    "ObjectiveWeights",
    "RecoveryConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "VocabAlignment",
    "check_vocab",
    "choice_kd_loss",
    "chunked_token_losses",
    "forward_kl",
    "generalized_jsd",
    "hidden_state_loss",
    "mutual_kl",
    "reverse_kl",
    "token_divergence",
    "train_mutual",
    "train_student",
]
