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

from importlib import import_module

from tinystudent.distill.config import LoraSettings, ObjectiveWeights, RecoveryConfig, TrainConfig

# The rest imports torch, so it loads on first use: the command line reads TrainConfig to build
# `tinystudent train`'s options, and every command would otherwise wait seconds for torch.
_MODULE_OF = {
    "TrainingDiverged": "loop",
    **dict.fromkeys(
        [
            "DIVERGENCES",
            "choice_kd_loss",
            "chunked_token_losses",
            "forward_kl",
            "generalized_jsd",
            "hidden_state_loss",
            "mutual_kl",
            "reverse_kl",
            "token_divergence",
        ],
        "losses",
    ),
    "TrainResult": "result",
    "train_mutual": "train",
    "train_student": "train",
    "VocabAlignment": "vocab",
    "check_vocab": "vocab",
}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


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
