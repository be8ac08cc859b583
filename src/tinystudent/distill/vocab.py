"""Can a teacher's next-token distribution be compared with a student's, token by token?

Token-level distillation compares logit rows one to one, so both models must give every token
the same id. Tokenizers are compared entry by entry. Output layers often carry extra rows that
no token uses (Qwen2.5 7B/14B have 152,064 rows, the 3B and smaller 151,936, over a
151,665-token tokenizer): when every row past the tokenizer is such padding in the larger model,
the comparison uses the rows both share and says so; anything else is refused with both sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinystudent.log import info


@dataclass(frozen=True)
class VocabAlignment:
    """How teacher and student logits line up: compare the first `size` rows of each."""

    size: int
    student_rows: int
    teacher_rows: int
    tokenizer_size: int

    @property
    def trimmed(self) -> bool:
        return self.student_rows != self.teacher_rows


def output_rows(model) -> int:
    """Rows of a model's output layer (its logits' last dimension)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output layer to distil logits into")
    return int(head.weight.shape[0])


def _first_difference(student_vocab: dict, teacher_vocab: dict) -> str:
    for token, index in student_vocab.items():
        if teacher_vocab.get(token) != index:
            return f"token {token!r} is id {index} for the student, {teacher_vocab.get(token)} for the teacher"
    for token, index in teacher_vocab.items():
        if token not in student_vocab:
            return f"token {token!r} (teacher id {index}) is missing from the student's tokenizer"
    return ""


def check_vocab(
    student_model,
    student_tokenizer,
    teacher_model,
    teacher_tokenizer,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> VocabAlignment:
    """Refuse token-level distillation between incompatible vocabularies, or align them.

    Raises:
        ValueError: naming both sizes, when the tokenizers differ or when the output layers
            differ in a way padding cannot explain.
    """
    student_rows, teacher_rows = output_rows(student_model), output_rows(teacher_model)
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"token-level logit distillation needs a shared vocabulary, but {teacher_name} "
            f"(tokenizer {len(teacher_vocab)} tokens, {teacher_rows} output rows) and {student_name} "
            f"(tokenizer {len(student_vocab)} tokens, {student_rows} output rows) differ: "
            f"{_first_difference(student_vocab, teacher_vocab)}. For models with different tokenizers use "
            "uld_kd (Universal Logit Distillation: each model reads the text in its own tokens), or the "
            "choice_kd or rationale objectives, which work across tokenizers too"
        )
    tokens = max(len(student_tokenizer), max(student_vocab.values()) + 1)
    if student_rows == teacher_rows:
        return VocabAlignment(student_rows, student_rows, teacher_rows, tokens)
    if min(student_rows, teacher_rows) < tokens:
        raise ValueError(
            f"vocabulary sizes differ: {teacher_name} has {teacher_rows} output rows, {student_name} "
            f"{student_rows}, and the smaller one cannot hold all {tokens} tokens of the shared "
            "tokenizer, so the extra rows are not padding; these models cannot be distilled token by token"
        )
    size = min(student_rows, teacher_rows)
    info(
        f"vocabulary alignment: {teacher_name} has {teacher_rows} output rows, {student_name} "
        f"{student_rows}; rows from {tokens} on are padding no token uses, so logit distillation "
        f"compares the first {size} rows of each"
    )
    return VocabAlignment(size, student_rows, teacher_rows, tokens)
