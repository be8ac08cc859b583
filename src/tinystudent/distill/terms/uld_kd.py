"""`uld_kd`: cross-tokenizer token-level distillation by Universal Logit Distillation (Boizard et
al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs").

The teacher reads each text (prompt + target) in its own tokens; the student in its own. Their
target positions are paired in order along each target, the first min(n_student, n_teacher) of
them, as in the paper (`data.align_targets`). At each pair both next-token distributions (at
`temperature`) are sorted in descending order, the shorter padded with zeros, and the loss is the
L1 distance between them (`losses.uld_distance`), averaged over the paired tokens. The answer
term's cross-entropy trains beside it as usual. Several teachers (`uld_kd:A+B`) are one target:
their sorted vectors averaged, each weighted by its weight (`losses.mean_sorted_target`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import TEACHER_MODELS, BatchNeeds, Term, TermContext

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class UniversalLogitKD(Term):
    name = "uld_kd"
    summary = "token-level KD across tokenizers (Universal Logit Distillation, --teacher-model)"
    names_teacher = True
    per_teacher = True
    teacher_data = TEACHER_MODELS
    teacher_model = True
    in_experiments = True  # a study names a teacher of its own with a local model
    teacher_tokens = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(answer_tokens=True, teacher_tokens=True)

    def add_loss(self, context: TermContext) -> None:
        import torch

        from tinystudent.distill.losses import chunked_uld_distances

        weights = context.weights.per_teacher(self.name)
        teachers = [t for t in weights if t in context.own_tokens and t in context.batch.teacher_tokens]
        if not teachers:
            return
        objectives = context.objectives
        head = objectives.adapter.output_head(objectives.core)
        total = sum(weights[t] for t in teachers)
        distances = []
        for batch_name, student_pass in context.passes.items():
            if not self.kd_on(batch_name):  # the student's own samples: no reading in the teachers' tokens
                continue
            aligned = [context.batch.teacher_tokens[t].get(batch_name) for t in teachers]
            if student_pass.rows is None or any(a is None for a in aligned):
                continue
            # Every teacher's batch is aligned on the same student rows (`data.align_targets`).
            student_rows = student_pass.rows[aligned[0].student_rows]  # type: ignore[union-attr]
            teacher_rows, teacher_heads = [], []
            for t, a in zip(teachers, aligned):
                states = context.own_tokens[t][batch_name]
                if states.rows is None or states.head is None:
                    raise ValueError(f"uld_kd: teacher model {t} was not run on its tokens of {batch_name}")
                teacher_rows.append(states.rows[a.teacher_rows])  # type: ignore[union-attr]
                teacher_heads.append(states.head)
            distances.append(
                chunked_uld_distances(
                    student_rows,
                    head,
                    teacher_rows,
                    teacher_heads,
                    [weights[t] / total for t in teachers],
                    temperature=objectives.temperature,
                    chunk_tokens=objectives.chunk_tokens,
                )
            )
        found = torch.cat(distances) if distances else None
        if found is not None and found.numel():
            context.add(self.name, found.mean(), total)


TERM = UniversalLogitKD()
