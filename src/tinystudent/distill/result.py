"""What a training run reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(kw_only=True)
class TrainResult:
    """The numbers of one trained student.

    Attributes:
        student: the student as named by the user.
        params, trainable_params, non_embedding_params, embedding_params: parameter counts
            before training (trainable counts the LoRA adapters under LoRA).
        steps: optimizer steps done.
        train_loss: mean total loss over the last `log_every` steps.
        valid_acc: best validation accuracy (the checkpoint kept); valid_acc_before: before training.
        test_acc: test accuracy of the kept checkpoint (None without test examples).
        tokens_per_s: tokens through the student per second of training (evaluation excluded).
        peak_memory_mb: GPU allocator peak, or the process's peak RSS on the CPU (see scope).
        checkpoint: folder of the kept model (plain model, or LoRA adapter unless merged).
        loss_history: one entry per step (step, loss, each term, lr).
        valid_history: one entry per evaluation (step, acc).
        inputs_fit: how many training inputs had their evidence (or question) cut to fit.
    """

    student: str
    method: str
    task: str
    params: int
    trainable_params: int
    non_embedding_params: int
    embedding_params: int
    steps: int
    total_steps: int
    epochs: float
    train_loss: float | None
    valid_acc: float | None
    valid_acc_before: float | None
    test_acc: float | None
    best_step: int | None
    stopped_early: bool
    tokens_per_s: float
    train_seconds: float
    peak_memory_mb: float
    peak_memory_scope: str
    checkpoint: str
    device: str
    run_key: str
    config: dict = field(default_factory=dict)
    loss_history: list[dict] = field(default_factory=list)
    valid_history: list[dict] = field(default_factory=list)
    test_eval: dict | None = None
    inputs_fit: dict | None = None  # how many training inputs were cut to max_input_tokens
    contamination: dict | None = None  # training and validation questions compared with the test ones

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The flat object `tinystudent train --json` prints (no per-step history)."""
        row = {k: v for k, v in self.to_dict().items() if k not in ("loss_history", "config")}
        return row

    @classmethod
    def from_dict(cls, data: dict) -> TrainResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
