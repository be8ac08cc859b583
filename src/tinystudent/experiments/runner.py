"""`tinystudent run`: measure the teachers, gather their outputs, train and measure every student.

Every step is a unit keyed by what it depends on (see `units`), so the runner can be killed at any
point and run again: finished units are read back from the store, training resumes from its last
checkpoint, and a changed part of the config reruns only what depends on it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from tinystudent.experiments.config import Experiment, ScoringPass, TeacherSpec, parse_scoring_pass
from tinystudent.experiments.units import UnitRunner, evaluate_in_subprocess
from tinystudent.log import info
from tinystudent.store import Store
from tinystudent.tasks import Example, data_hash, load_task


@dataclass
class Splits:
    task: str
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    origin: dict

    def hashes(self) -> dict:
        return {"train": data_hash(self.train), "valid": data_hash(self.valid), "test": data_hash(self.test)}


def load_splits(experiment: Experiment) -> Splits:
    spec = experiment.task
    data = load_task(spec.name, seed=spec.seed)
    cut = lambda rows, limit: rows[:limit] if limit else rows  # noqa: E731
    return Splits(
        spec.name,
        cut(data.split("train"), spec.train_limit),
        cut(data.split("validation"), spec.valid_limit),
        cut(data.split(spec.test_split), spec.test_limit),
        data.origin,
    )


def _release() -> None:
    """Drop models loaded for a unit before the next one, so memory does not pile up."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class ExperimentRunner:
    """Plans and runs one experiment; `run()` returns the study dict the report renders."""

    def __init__(self, experiment: Experiment, store: Store, out_dir: Path):
        self.x, self.store, self.out_dir = experiment, store, Path(out_dir)
        self.units = UnitRunner(store, experiment.name, self.out_dir / "logs")
        self.splits = load_splits(experiment)
        self.base = {"task": experiment.task.model_dump(), "data": self.splits.hashes()}

    # --- teachers ---------------------------------------------------------------------------

    def teacher_payload(self, spec: TeacherSpec, scoring: bool = False) -> dict:
        """What a teacher's units depend on: which ways it is scored is left out, so adding one
        reuses what the others computed; its scores (`scoring`) depend only on the model and its
        input budget, not on how it teaches."""
        exclude = {"eval_modes", "batch_size"}
        if scoring:
            exclude |= {"strategy", "k_shots", "max_new_tokens", "teach_limit", "choice_limit", "rationales"}
        return {**self.base, "teacher": spec.model_dump(exclude=exclude)}

    def train_config(self, spec=None, **options):
        """The experiment's training block, the student's changes and `options` on top; inputs
        fitted to the experiment's budget when it sets one."""
        from tinystudent.distill import TrainConfig

        fitted = {"max_input_tokens": self.x.task.max_input_tokens} if self.x.task.max_input_tokens else {}
        return TrainConfig(**{**self.x.training, **fitted, **(spec.training if spec else {}), **options})

    def teacher_budget(self, spec: TeacherSpec) -> int | None:
        """Tokens a teacher's inputs are fitted to: its own budget, else the task's."""
        return spec.max_input_tokens or self.x.task.max_input_tokens

    def teaching_examples(self, spec: TeacherSpec, limit: int | None) -> list[Example]:
        """The first `limit` training questions, those a teacher writes rationales (`teach_limit`)
        or choice probabilities (`choice_limit`) for; students train on all, the others without
        this teacher's signal."""
        return self.splits.train[:limit] if limit else self.splits.train

    def make_teacher(self, spec: TeacherSpec):
        from tinystudent.teachers import make_teacher

        if spec.backend == "local":
            return make_teacher(spec.model, batch_size=spec.batch_size, device=self.x.device)
        return make_teacher(spec.model, spec.base_url, spec.api_key_env)

    def evaluate(
        self,
        model: str,
        log: Path,
        split: str | None = None,
        limit: int | None = None,
        scoring: ScoringPass | None = None,
        budget: int | None = None,
        part: str | None = None,
    ) -> dict:
        """`model` on the test split (or `split`, first `limit` questions), in its own process,
        its inputs fitted to `budget` (default: the experiment's). The evaluation is filed under
        the running unit's key, and `part` when the unit evaluates several models."""
        task = self.x.task
        scoring = scoring or parse_scoring_pass("zero_shot")
        return evaluate_in_subprocess(
            model,
            self.splits.task,
            split or task.test_split,
            limit if split else task.test_limit,
            task.seed,
            self.store.path,
            log,
            self.x.eval_batch_size,
            self.x.device,
            scoring.mode,
            scoring.num_fewshot,
            budget or task.max_input_tokens,
            f"{self.units.current}:{part}" if part else self.units.current,
        )

    def measure_teacher(self, spec: TeacherSpec) -> dict:
        """The teacher's test accuracy (the baseline to beat), or its reported number.

        A local teacher is run on the validation split in each of its `eval_modes`; the test
        split is then scored in the way (pass and metric) that did best there."""
        if not spec.measured:
            return {
                "name": spec.name,
                "acc": spec.reported_acc,
                "measured": False,
                "source": spec.reported_source,
                "evaluation_id": None,
            }
        if spec.backend == "http":
            return self.units.run(
                "teacher_eval",
                f"teacher {spec.name}",
                self.teacher_payload(spec),
                lambda log: self._measure_http_teacher(spec),
            )
        passes = [parse_scoring_pass(mode) for mode in spec.eval_modes]
        candidates = [(p, metric) for p in passes for metric in p.metrics]
        validation = []
        if len(candidates) > 1:
            for scoring in passes:
                row = self._teacher_pass(spec, scoring, "validation")
                validation += [
                    {"scoring": scoring.label(m), "pass": scoring.name, "metric": m, "acc": row[m]}
                    for m in scoring.metrics
                ]
            best = max(validation, key=lambda r: r["acc"])  # max keeps the first of equals
            chosen = next(c for c in candidates if (c[0].name, c[1]) == (best["pass"], best["metric"]))
        else:
            chosen = candidates[0]
        scoring, metric = chosen
        test = self._teacher_pass(spec, scoring, self.x.task.test_split)
        return {
            **test,
            "acc": test[metric],
            "metric": metric,
            "scoring": scoring.label(metric),
            "validation": validation,
        }

    def _teacher_pass(self, spec: TeacherSpec, scoring: ScoringPass, split: str) -> dict:
        """One cached evaluation of a local teacher on `split` in one way of scoring it."""
        limit = self.x.task.valid_limit if split == "validation" else self.x.task.test_limit
        payload = {**self.teacher_payload(spec, scoring=True), "split": split, "scoring": scoring.name}
        label = f"teacher {spec.name} ({scoring.name}, {split})"
        return self.units.run(
            "teacher_eval",
            label,
            payload,
            lambda log: {
                "name": spec.name,
                "measured": True,
                **self.evaluate(
                    spec.model,
                    log,
                    split if split != self.x.task.test_split else None,
                    limit,
                    scoring,
                    self.teacher_budget(spec),
                ),
            },
        )

    def _measure_http_teacher(self, spec: TeacherSpec) -> dict:
        import numpy as np

        from tinystudent.evaluation.stats import bootstrap_ci
        from tinystudent.teachers import make_teacher, teacher_choice_logprobs

        teacher = make_teacher(spec.model, spec.base_url, spec.api_key_env)
        scores = teacher_choice_logprobs(
            teacher, self.splits.test, self.splits.task, self.store, max_input_tokens=self.teacher_budget(spec)
        )
        correct = [bool(ex.id in scores and int(np.argmax(scores[ex.id])) == ex.answer) for ex in self.splits.test]
        return {
            "name": spec.name,
            "measured": True,
            "acc": float(np.mean(correct)),
            "ci95": list(bootstrap_ci(correct)),
            "correct": correct,
            "n": len(correct),
            "params": None,
            "peak_memory_mb": None,
            "latency_ms_p50": None,
        }

    def teacher_rationales(self, spec: TeacherSpec) -> dict[str, str]:
        """The teacher's rationales for the training questions, generated once or imported."""
        from tinystudent.teachers import load_rationales

        payload = {**self.teacher_payload(spec), "what": "rationales"}
        if spec.backend == "imported":

            def work(log: Path) -> dict:
                from tinystudent.teachers import read_bundled, read_rationales_jsonl, read_tinyllm, store_rationales

                source = spec.rationales
                if source.format == "tinyllm":
                    imported = read_tinyllm(Path(source.path), "train").rationales
                elif source.format == "bundled":
                    imported = read_bundled("train")
                else:
                    imported = read_rationales_jsonl(Path(source.path), self.splits.train)
                wanted = [r for r in imported if source.teacher in (None, r.teacher)]
                stored = store_rationales(self.store, wanted, self.splits.task, self.splits.train)
                return {"stored": stored}

            self.units.run("import", f"rationales of {spec.name}", payload, work)
            name, strategy = spec.rationales.teacher or spec.name, "imported"
        else:

            def work(log: Path) -> dict:
                from tinystudent.teachers import teach

                teacher = self.make_teacher(spec)
                summary = teach(
                    teacher,
                    self.teaching_examples(spec, spec.teach_limit),
                    self.splits.task,
                    spec.strategy,
                    self.store,
                    train_examples=self.splits.train,
                    k_shots=spec.k_shots,
                    seed=self.x.task.seed,
                    max_new_tokens=spec.max_new_tokens,
                    max_input_tokens=self.teacher_budget(spec),
                )
                teacher.close()
                _release()
                return {k: v for k, v in summary.to_dict().items() if k != "outputs"}

            self.units.run("teach", f"rationales of {spec.name}", payload, work)
            name, strategy = spec.model, spec.strategy
        found = load_rationales(self.store, name, self.splits.task, strategy)
        train_ids = {ex.id for ex in self.splits.train}
        return {k: v for k, v in found.items() if k in train_ids}

    def teacher_choice_scores(self, spec: TeacherSpec) -> dict[str, list[float]]:
        """The teacher's log-likelihood of each choice on the training questions (cached)."""
        from tinystudent.teachers import teacher_choice_logprobs

        if not spec.measured:
            raise ValueError(f"choice_kd:{spec.name}: an imported teacher has no choice probabilities")
        teacher = self.make_teacher(spec)
        scores = teacher_choice_logprobs(
            teacher,
            self.teaching_examples(spec, spec.choice_limit),
            self.splits.task,
            self.store,
            max_input_tokens=self.teacher_budget(spec),
        )
        teacher.close()
        _release()
        return scores

    # --- students ---------------------------------------------------------------------------

    HELDOUT_BYTES = 12000

    def heldout_text(self) -> str:
        """The text every causal student's bits per byte is measured on, before and after any
        recovery: the validation questions with their evidence and choices (never trained on)."""
        from tinystudent.evaluation.bits_per_byte import task_corpus, truncate_utf8

        return truncate_utf8(task_corpus(self.splits.valid), self.HELDOUT_BYTES)

    def bits_per_byte(self, loaded) -> float:
        from tinystudent.evaluation.bits_per_byte import cached_bits_per_byte

        return cached_bits_per_byte(
            loaded, self.heldout_text(), f"task:{self.x.task.name}/validation", self.store, window=512
        )["bits_per_byte"]

    def prepare_student(self, spec) -> dict:
        """The student's folder (scaled down and recovered when asked), its size and its bits per
        byte on held-out text."""
        payload = {
            "student": spec.payload(),
            "bpb": self.x.measure_bits_per_byte,
            "heldout": self.base["data"]["valid"],
        }
        cut, recovery = spec.model, None
        if spec.is_cut:
            cut = self.units.run(
                "cut",
                f"cut of {spec.name}",
                {"student": spec.payload(include={"model", "keep_layers", "kind", "mlp_width"})},
                lambda log: {"path": self.cut_student(spec)},
            )["path"]
            if spec.recover is not None:
                recovery = self.recover_student(spec, cut)

        def work(log: Path) -> dict:
            from tinystudent.models import count_parameters, load_model

            path = recovery["path"] if recovery else cut
            loaded = load_model(path, device=self.x.device, kind=spec.kind)
            params = count_parameters(loaded.model)
            bpb = self.bits_per_byte(loaded) if self.x.measure_bits_per_byte and loaded.kind == "causal" else None
            result = {
                "path": path,
                "kind": loaded.kind,
                "params": params["total"],
                "non_embedding_params": params["non_embedding"],
                "bits_per_byte": bpb,
                "recovery": recovery,
            }
            del loaded
            _release()
            return result

        return self.units.run("student", f"student {spec.name}", payload, work)

    def cut_student(self, spec) -> str:
        from tinystudent.models.students import scale_down

        return str(
            scale_down(
                spec.model,
                spec.keep_layers,
                self.out_dir / "students" / spec.name,
                kind=spec.kind,
                mlp_width=spec.mlp_width,
            )
        )

    def recover_student(self, spec, cut: str) -> dict:
        """Distil the model a student was cut from into it on the task's text (a cached unit)."""
        from tinystudent.distill.recover import recover, recovery_texts
        from tinystudent.evaluation.bits_per_byte import text_sha256

        rationales = {t.name: self.teacher_rationales(t) for t in self.x.teachers if t.writes_rationales}
        extra = [ex for name in spec.recover.extra_tasks for ex in load_task(name).split("train")]
        texts = recovery_texts(self.splits.train, rationales, extra)
        heldout = self.heldout_text()
        payload = {
            "student": spec.payload(include={"model", "keep_layers", "kind", "recover", "mlp_width"}),
            "text": text_sha256("\n".join(texts)),
            "heldout": text_sha256(heldout),
        }

        def work(log: Path) -> dict:
            result = recover(
                cut,
                spec.model,
                texts,
                heldout,
                spec.recover,
                self.out_dir / "students" / f"{spec.name}-recovery",
                device=self.x.device,
                measure=lambda loaded, text: self.bits_per_byte(loaded),
            )
            _release()
            with log.open("a") as handle:
                for row in result.loss_history:
                    handle.write(f"{row}\n")
            return result.summary()

        return self.units.run("recover", f"recovery of {spec.name}", payload, work)

    def evaluate_student(self, label: str, payload: dict, path_of) -> dict:
        """Test accuracy and cost of a model folder, in its own process."""
        return self.units.run("student_eval", label, payload, lambda log: self.evaluate(path_of(log), log))

    def objective_inputs(self, objective: str) -> tuple[dict, dict, dict]:
        """Objective weights and the teacher data one objective needs."""
        head, _, teacher_name = objective.partition(":")
        if head == "answer":
            return {"answer": 1.0}, {}, {}
        names = [t.name for t in self.x.teachers] if teacher_name == "all" else [teacher_name]
        if head == "rationale":
            rationales = {
                name: self.teacher_rationales(self.x.teacher(name))
                for name in names
                if self.x.teacher(name).writes_rationales
            }
            return {"answer": 1.0, "rationale": 1.0}, rationales, {}
        if head == "choice_kd":
            scores = {name: self.teacher_choice_scores(self.x.teacher(name)) for name in names}
            return {"answer": 1.0, "choice_kd": 1.0}, {}, scores
        raise ValueError(f"objective {objective!r} is not supported by the experiment runner yet")

    def train_one(
        self,
        spec,
        prepared: dict,
        method: str,
        objective: str,
        seed: int,
        given: tuple | None = None,
        extra: dict | None = None,
    ) -> dict | None:
        """Train one student with one method and objective, then measure it on the test split."""
        from tinystudent.distill import train_student

        if prepared["kind"] == "encoder" and objective.startswith("rationale"):
            info(f"skipping {spec.name} / {objective}: an encoder student cannot write rationales")
            return None
        teacher_part = dict(extra or {})
        if ":" in objective and given is None:
            names = (
                [t.name for t in self.x.teachers if t.writes_rationales or not objective.startswith("rationale")]
                if objective.endswith(":all")
                else [objective.split(":")[1]]
            )
            teacher_part = {n: self.teacher_payload(self.x.teacher(n))["teacher"] for n in names}
        payload = {
            **self.base,
            "student": spec.payload(),
            "method": method,
            "objective": objective,
            "seed": seed,
            "training": self.x.training,
            "teachers": teacher_part,
        }
        label = f"{spec.name} / {method} / {objective} / seed {seed}"

        def work(log: Path) -> dict:
            weights, rationales, scores = given or self.objective_inputs(objective)
            options = {"method": method, "seed": seed, "weights": weights}
            if method == "lora":
                options["lora"] = {**self.x.training.get("lora", {}), "merge": True}
            config = self.train_config(spec, **options)
            run_dir = self.out_dir / "runs" / log.stem
            result = train_student(
                prepared["path"],
                self.splits.train,
                self.splits.valid,
                config,
                run_dir,
                rationales=rationales or None,
                choice_logprobs=scores or None,
                task=self.splits.task,
            )
            _release()
            trained = result.to_dict() if hasattr(result, "to_dict") else dict(result.__dict__)
            with log.open("a") as handle:
                for row in trained.get("loss_history", []):
                    handle.write(f"{row}\n")
            trained.pop("loss_history", None)
            summary = self.evaluate(str(result.checkpoint), log, budget=config.max_input_tokens)
            return {
                "train": trained,
                **summary,
                "student": spec.name,
                "method": method,
                "objective": objective,
                "seed": seed,
                "group": "taught",
                "bits_per_byte": prepared.get("bits_per_byte"),
                "train_seconds": trained.get("train_seconds"),
            }

        return self.units.run("train", label, payload, work)

    # --- collaboration between small models ---------------------------------------------------

    def collaborate(self, members: dict[str, dict], prepared: dict[str, dict]) -> list[dict]:
        """Ensembles, debate and mutual learning over the collaboration members."""
        spec = self.x.collaboration
        rows: list[dict] = []
        if not spec:
            return rows
        names = [n for n in spec.members if n in members]
        debaters = [n for n in (spec.debate_members or spec.members) if n in members]
        if spec.debate_rounds and len(debaters) >= 2:
            rows.append(self._debate(debaters, members))
        if len(names) < 2:
            return rows
        if spec.ensemble:
            rows += self._ensembles(names, members)
        if spec.mutual_learning:
            rows += self._mutual(names, prepared)
        if spec.collaborative_teaching:
            rows += self._collaborative_teaching(names, prepared)
        return rows

    def _collaborative_teaching(self, names: list[str], prepared: dict[str, dict]) -> list[dict]:
        """Each member writes teacher-forcing rationales; each learns from the other members'."""

        peers = {n: TeacherSpec(name=f"peer:{n}", model=prepared[n]["path"], max_new_tokens=64) for n in names}
        rationales = {n: self.teacher_rationales(peers[n]) for n in names}
        rows = []
        seed = self.x.seeds[0]
        for name in names:
            others = {f"peer:{o}": rationales[o] for o in names if o != name and rationales[o]}
            spec = next(s for s in self.x.students if s.name == name)
            row = self.train_one(
                spec,
                prepared[name],
                "full",
                "rationale:peers",
                seed,
                given=({"answer": 1.0, "rationale": 1.0}, others, {}),
                extra={"peers": {k: peers[k[5:]].model_dump() for k in others}},
            )
            if row:
                rows.append({**row, "group": "collaboration", "objective": "collab_teaching", "members": names})
        return rows

    def _ensembles(self, names: list[str], members: dict[str, dict]) -> list[dict]:
        from tinystudent.collab.results import ensemble_eval_result
        from tinystudent.experiments.study import stored_eval_result

        rows = []
        for method in ("average", "vote"):
            payload = {**self.base, "ensemble": method, "members": [members[n]["run_key"] for n in names]}

            def work(log: Path, method=method) -> dict:
                results = [stored_eval_result(self.store, members[n]["evaluation_id"]) for n in names]
                group = ensemble_eval_result(results, method, name=f"ensemble-{method}({'+'.join(names)})")
                evaluation_id = self.store.save_evaluation(group, self.units.current)  # one unit per method
                return {**group.summary(), "evaluation_id": evaluation_id}

            row = self.units.run("ensemble", f"ensemble {method} of {' + '.join(names)}", payload, work)
            rows.append(
                {
                    **row,
                    "group": "collaboration",
                    "objective": f"ensemble:{'avg' if method == 'average' else 'vote'}",
                    "members": [members[n]["label"] for n in names],
                    "student": "+".join(names),
                    "method": "-",
                    "seed": members[names[0]].get("seed", 0),
                }
            )
        return rows

    def _debate(self, names: list[str], members: dict[str, dict]) -> dict:
        spec = self.x.collaboration
        examples = self.splits.test[: spec.debate_limit] if spec.debate_limit else self.splits.test
        payload = {
            **self.base,
            "debate": spec.debate_rounds,
            "limit": spec.debate_limit,
            "members": [members[n]["run_key"] for n in names],
            "unparsed": "picked by likelihood",
        }

        def work(log: Path) -> dict:
            from tinystudent.collab.debate import debate, debate_eval_result
            from tinystudent.models import load_model

            loaded = [load_model(members[n]["checkpoint"], device=self.x.device) for n in names]
            questions = self._fit_for_debate(examples, loaded[0].tokenizer)
            result = debate(loaded, questions, rounds=spec.debate_rounds, max_new_tokens=48)
            evaluated = debate_eval_result(result, examples, self.splits.task, self.x.task.test_split)
            evaluation_id = self.store.save_evaluation(evaluated, self.units.current)
            del loaded
            _release()
            return {**evaluated.summary(), "evaluation_id": evaluation_id}

        subset = f" ({len(examples)} test questions)" if len(examples) < len(self.splits.test) else ""
        row = self.units.run("debate", f"debate of {' + '.join(names)}{subset}", payload, work)
        return {
            **row,
            "group": "collaboration",
            "objective": "debate",
            "student": "+".join(names),
            "members": [members[n]["label"] for n in names],
            "method": "-",
            "seed": 0,
        }

    def _fit_for_debate(self, examples: list[Example], tokenizer) -> list[Example]:
        """Each question's evidence cut so its first debate prompt fits the experiment's input
        budget (later rounds add the other members' short answers on top)."""
        from tinystudent.collab.debate import first_prompt
        from tinystudent.evaluation.fit import fit_example, token_counter

        budget = self.x.task.max_input_tokens
        if not budget:
            return examples
        count = token_counter(tokenizer)
        return [fit_example(ex, first_prompt, count, tokenizer, budget).example for ex in examples]

    def _mutual(self, names: list[str], prepared: dict[str, dict]) -> list[dict]:
        from tinystudent.distill import train_mutual

        seed = self.x.seeds[0]
        payload = {
            **self.base,
            "mutual": names,
            "training": self.x.training,
            "seed": seed,
            "students": [prepared[n]["run_key"] for n in names],
            **({"changes": self.x.collaboration.training} if self.x.collaboration.training else {}),
        }

        def work(log: Path) -> dict:
            config = self.train_config(
                None, **self.x.collaboration.training, method="full", seed=seed, weights={"answer": 1.0, "mutual": 1.0}
            )
            run_dir = self.out_dir / "runs" / log.stem
            results = train_mutual(
                [prepared[n]["path"] for n in names],
                self.splits.train,
                self.splits.valid,
                config,
                run_dir,
                task=self.splits.task,
            )
            _release()
            peers = []
            for name, result in zip(names, results):
                summary = self.evaluate(str(result.checkpoint), log, budget=config.max_input_tokens, part=name)
                peers.append({**summary, "peer": name, "checkpoint": str(result.checkpoint)})
            return {"peers": peers}

        done = self.units.run("mutual", f"mutual learning of {' + '.join(names)}", payload, work)
        return [
            {
                **peer,
                "label": f"{peer['peer']} / mutual with {'+'.join(n for n in names if n != peer['peer'])}",
                "run_key": f"{done['run_key']}:{peer['peer']}",
                "group": "collaboration",
                "objective": "mutual",
                "student": peer["peer"],
                "method": "full",
                "seed": seed,
                "members": names,
                "bits_per_byte": prepared[peer["peer"]].get("bits_per_byte"),
            }
            for peer in done["peers"]
        ]

    # --- loss-guided search -------------------------------------------------------------------

    def search(self, prepared: dict[str, dict], teachers: list[dict], runs: list[dict]) -> dict:
        """Train the ladder smallest first, skipping by bits per byte, stopping at the first winner."""
        from tinystudent.experiments.search import Candidate, loss_guided_search
        from tinystudent.experiments.study import correct_by_id
        from tinystudent.experiments.verdict import compare

        spec = self.x.search
        judged = [t for t in teachers if t.get("acc") is not None]
        if not judged:
            raise ValueError("search: no teacher accuracy to beat")
        best = max(judged, key=lambda t: t["acc"])
        ids, correct = correct_by_id(self.store, best.get("evaluation_id"), best.get("metric", "acc"))
        teacher = {"name": best["name"], "acc": best["acc"], "ids": ids, "correct": correct}
        by_name = {s.name: s for s in self.x.students}
        candidates = [
            Candidate(n, p["params"], p["bits_per_byte"])
            for n, p in prepared.items()
            if p.get("bits_per_byte") is not None
        ]

        def train(candidate):
            row = self.train_one(
                by_name[candidate.name], prepared[candidate.name], spec.method, spec.objective, self.x.seeds[0]
            )
            runs.append(row)
            return row

        def beats(row) -> bool:
            ids_, correct_ = correct_by_id(self.store, row["evaluation_id"])
            result = compare({"label": row["label"], "ids": ids_, "correct": correct_}, teacher)
            return result["diff"] > 0 and result["p_value"] < spec.alpha

        report = loss_guided_search(candidates, train, beats, spec.threshold, spec.fit_threshold, spec.margin)
        summary = report.summary()
        return {**summary, "teacher": best["name"], "ladder": summary["ladder_size"], "saved": summary["runs_saved"]}

    # --- the whole study ------------------------------------------------------------------------

    def run(self) -> dict:
        from tinystudent.experiments.study import build_study

        x = self.x
        info(
            f"experiment {x.name}: task {self.splits.task} (train {len(self.splits.train)}, "
            f"validation {len(self.splits.valid)}, {x.task.test_split} {len(self.splits.test)})"
        )
        teachers = [self.measure_teacher(spec) for spec in x.teachers]
        runs: list[dict] = []
        prepared = {}
        for spec in x.students:
            prepared[spec.name] = self.prepare_student(spec)
            if prepared[spec.name]["kind"] != "encoder":  # an untrained encoder's head is random
                untrained = self.evaluate_student(
                    f"{spec.name} / untrained",
                    {**self.base, "student": spec.payload(), "untrained": True},
                    lambda log, p=prepared[spec.name]["path"]: p,
                )
                runs.append(
                    {
                        **untrained,
                        "student": spec.name,
                        "method": "-",
                        "objective": "untrained",
                        "seed": 0,
                        "group": "untrained",
                        "bits_per_byte": prepared[spec.name].get("bits_per_byte"),
                    }
                )
        best_per_student: dict[str, dict] = {}
        for spec in [] if x.search else x.students:
            for method in x.methods_of(spec).finetune:
                for objective in x.methods_of(spec).objectives:
                    for seed in x.seeds:
                        row = self.train_one(spec, prepared[spec.name], method, objective, seed)
                        if row is None:
                            continue
                        runs.append(row)
                        row["checkpoint"] = row.get("train", {}).get("checkpoint")
                        best = best_per_student.get(spec.name)
                        if best is None or row["train"].get("valid_acc", 0) > best["train"].get("valid_acc", 0):
                            best_per_student[spec.name] = row
        runs += self.collaborate(best_per_student, prepared)
        search = self.search(prepared, teachers, runs) if x.search else None
        study = build_study(
            x,
            self.splits,
            teachers,
            runs,
            self.store,
            skipped=len(self.units.skipped),
            computed=len(self.units.done),
            prepared=prepared,
        )
        study["search"] = search
        self.store.save_run(f"study:{x.name}", "study", "done", {"experiment": x.name}, study, x.name)
        if x.mlflow:
            from tinystudent.experiments.tracking import log_study, tracking_uri

            uri = tracking_uri(x.mlflow, self.out_dir)
            info(f"MLflow: logged {log_study(study, x.name, uri)} new run(s) to {uri}")
        return study


def run_experiment(experiment: Experiment, store: Store, out_dir: Path) -> dict:
    """Run (or resume) `experiment`, store every number, and return the study."""
    return ExperimentRunner(experiment, store, out_dir).run()


__all__ = ["ExperimentRunner", "Splits", "load_splits", "run_experiment"]
