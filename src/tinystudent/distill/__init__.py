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
    hidden_state_loss, chunked_token_losses, uld_distance (cross-tokenizer), mixture_logits
    (several teachers); check_vocab / VocabAlignment.
"""

from importlib import import_module

from tinystudent.distill.config import LoraSettings as LoraSettings
from tinystudent.distill.config import ObjectiveWeights as ObjectiveWeights
from tinystudent.distill.config import RecoveryConfig as RecoveryConfig
from tinystudent.distill.config import TrainConfig as TrainConfig

# The rest imports torch, so it loads on first use: the command line reads TrainConfig to build
# `tinystudent train`'s options, and every command would otherwise wait seconds for torch.
_LAZY_NAMES = {
    "loop": ["TrainingDiverged"],
    "losses": [
        "DIVERGENCES",
        "choice_kd_loss",
        "chunked_token_losses",
        "forward_kl",
        "generalized_jsd",
        "hidden_state_loss",
        "mixture_logits",
        "mutual_kl",
        "reverse_kl",
        "token_divergence",
        "uld_distance",
    ],
    "result": ["TrainResult"],
    "train": ["train_mutual", "train_student"],
    "vocab": ["VocabAlignment", "check_vocab"],
}
_MODULE_OF = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


# One list of names: the ones loaded above and the lazy ones.
__all__ = sorted(["LoraSettings", "ObjectiveWeights", "RecoveryConfig", "TrainConfig", *_MODULE_OF])
