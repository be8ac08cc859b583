"""Students: layer selection, scaled-down copies with the kept weights copied, fresh students."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_ARCHITECTURES
from safetensors.torch import load_file

from tinystudent.models import count_parameters, load_model
from tinystudent.models.students import fresh_student, layer_stacks, parse_keep, scale_down, student_ladder


def test_parse_keep_forms():
    assert parse_keep("first:4", 30) == [0, 1, 2, 3]
    assert parse_keep("last:2", 30) == [28, 29]
    assert parse_keep("every:10", 30) == [0, 10, 20]
    assert parse_keep("spread:4", 30) == [0, 10, 19, 29]
    assert parse_keep("0,5,-1", 30) == [0, 5, 29]
    assert parse_keep([3, 1], 30) == [1, 3]
    for bad, message in [
        ("first:31", "only 30"),
        ("every:0", "positive"),
        ("half:2", "unknown form"),
        ([0, 30], "outside"),
        ("1,1", "twice"),
        ("a,b", "expected"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_keep(bad, 30)


def _weights(folder) -> dict[str, torch.Tensor]:
    state = {}
    for file in folder.glob("*.safetensors"):
        state.update(load_file(str(file)))
    return state


@pytest.mark.parametrize(
    "fixture,stacks",
    [
        ("tiny_causal", ["model.layers"]),
        ("tiny_seq2seq", ["encoder.block", "decoder.block"]),
        ("tiny_encoder", ["bert.encoder.layer"]),
    ],
)
def test_scale_down_keeps_the_chosen_layers_with_copied_weights(fixture, stacks, request, tmp_path):
    source = request.getfixturevalue(fixture)
    out = scale_down(str(source), [1], tmp_path / "student")
    original, smaller = _weights(source), _weights(out)
    kept_keys = [k for k in smaller if any(k.startswith(f"{s}.0.") for s in stacks)]
    assert kept_keys
    for key in kept_keys:
        stack = next(s for s in stacks if key.startswith(f"{s}.0."))
        source_key = key.replace(f"{stack}.0.", f"{stack}.1.", 1)
        if source_key not in original:  # T5's relative position bias lives in block 0 only
            source_key = key
        assert torch.equal(smaller[key], original[source_key]), key
    assert not any(k.startswith(f"{s}.1.") for s in stacks for k in smaller)
    for key in smaller:  # everything outside the stacks is copied unchanged
        if not any(key.startswith(f"{s}.") for s in stacks) and key in original:
            assert torch.equal(smaller[key], original[key]), key
    loaded = load_model(str(out), device="cpu")
    assert set(layer_stacks(loaded.model).values()) == {1}
    manifest = json.loads((out / "student.json").read_text())
    assert all(v == [1] for v in manifest["kept"].values())
    assert manifest["params"]["total"] == count_parameters(loaded.model)["total"]


def test_scaled_down_model_computes_what_its_layers_compute(tiny_causal, tmp_path):
    """Keeping every layer reproduces the source's logits exactly (nothing re-initialised)."""
    out = scale_down(str(tiny_causal), "first:2", tmp_path / "all")
    ids = torch.tensor([[5, 17, 42, 9, 100]])
    a = load_model(str(tiny_causal), device="cpu").model(input_ids=ids).logits
    b = load_model(str(out), device="cpu").model(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_scale_down_reuses_and_refuses_a_different_student(tiny_causal, tmp_path):
    out = scale_down(str(tiny_causal), [0], tmp_path / "s")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert scale_down(str(tiny_causal), [0], tmp_path / "s") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # nothing built twice
    with pytest.raises(FileExistsError, match="different student"):
        scale_down(str(tiny_causal), [1], tmp_path / "s")


def test_a_folder_tinystudent_did_not_make_is_never_deleted(tiny_causal, tmp_path):
    """The student's temporary sibling `s.tmp` is the user's own folder here: building refuses,
    naming it, and leaves it whole; a marked leftover of a killed build is replaced as before."""
    from tinystudent.folders import MARK

    theirs = tmp_path / "s.tmp"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="s.tmp: is in the way and was not made by tinystudent"):
        scale_down(str(tiny_causal), [0], tmp_path / "s")
    assert (theirs / "thesis.tex").read_text() == "years of work" and not (tmp_path / "s").exists()
    (theirs / "thesis.tex").unlink()
    (theirs / MARK).write_text("")  # what a killed build leaves
    (theirs / "half.safetensors").write_text("")
    out = scale_down(str(tiny_causal), [0], tmp_path / "s")
    assert (out / MARK).exists() and not theirs.exists()


@pytest.mark.slow
def test_smollm2_yields_a_ladder_with_copied_weights(smollm2, tmp_path):
    source = smollm2.resolved.path
    paths = student_ladder(str(source), ["first:2", "every:10"], tmp_path)
    sizes = [count_parameters(load_model(str(p), device="cpu").model) for p in paths]
    per_layer = sizes[1]["non_embedding"] - sizes[0]["non_embedding"]  # 3 layers vs 2 layers
    assert sizes[0]["embedding"] == sizes[1]["embedding"] == 49152 * 576
    assert 3.0e6 < per_layer < 4.0e6
    original = _weights(source)
    smaller = _weights(paths[1])
    for new, old in enumerate([0, 10, 20]):
        key = f"model.layers.{new}.mlp.down_proj.weight"
        assert torch.equal(smaller[key], original[f"model.layers.{old}.mlp.down_proj.weight"])


def test_fresh_student_from_a_config_and_from_a_model(tiny_causal, tmp_path):
    config = {
        "model_type": "llama",
        "vocab_size": 320,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    out = fresh_student(config, tmp_path / "fresh", tokenizer_from=str(tiny_causal), seed=1)
    loaded = load_model(str(out), device="cpu")
    assert layer_stacks(loaded.model) == {"model.layers": 3}
    again = fresh_student(str(tiny_causal), tmp_path / "again", seed=1, num_hidden_layers=1)
    original, fresh = _weights(tiny_causal), _weights(again)
    key = "model.layers.0.mlp.down_proj.weight"
    assert fresh[key].shape == original[key].shape and not torch.equal(fresh[key], original[key])
    with pytest.raises(ValueError, match="model_type"):
        fresh_student({"hidden_size": 8}, tmp_path / "bad")


def test_load_model_reads_an_adapter_folder_onto_its_base(tiny_causal, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(str(tiny_causal), device="cpu")
    peft_model = get_peft_model(base.model, LoraConfig(r=2, target_modules=["q_proj"]))
    torch.nn.init.normal_(peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[3, 4, 5]])
    expected = peft_model(input_ids=ids).logits
    student = load_model(str(tmp_path / "adapter"), device="cpu")
    torch.testing.assert_close(student.model(input_ids=ids).logits, expected)
    assert student.resolved.identity.startswith(base.resolved.identity + "+adapter:")


@pytest.mark.parametrize("model_type", sorted(TINY_ARCHITECTURES))
def test_other_causal_families_scale_down_and_train(model_type, tiny_causal, tmp_path):
    """GPT-2 (`transformer.h`), Pythia/GPT-NeoX (`gpt_neox.layers`) and Qwen2 (`model.layers`)."""
    from tinystudent.distill import TrainConfig, train_student
    from tinystudent.tasks.schema import Example

    config = {"model_type": model_type, "vocab_size": 320, **TINY_ARCHITECTURES[model_type]}
    source = fresh_student(config, tmp_path / "source", tokenizer_from=str(tiny_causal), seed=3)
    out = scale_down(str(source), "0,2", tmp_path / "small")
    original, smaller = _weights(source), _weights(out)
    stack = next(iter(layer_stacks(load_model(str(out), device="cpu").model)))
    moved = [k for k in smaller if k.startswith(f"{stack}.1.")]
    assert moved and all(torch.equal(smaller[k], original[k.replace(f"{stack}.1.", f"{stack}.2.", 1)]) for k in moved)
    examples = [
        Example(f"q{i}", f"Which is {w}?", ("sun", "water", "rock"), i % 3)
        for i, w in enumerate(["sun", "water", "rock", "sun", "water", "rock"])
    ]
    for method in ("full", "lora"):
        cfg = TrainConfig(steps=2, batch_size=3, lr=1e-3, method=method, eval_before=False, device="cpu")
        result = train_student(str(out), examples[:4], examples[4:], cfg, tmp_path / f"run-{method}", task="t")
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.loss_history)
        assert (result.trainable_params < result.params) == (method == "lora")


@pytest.mark.parametrize(
    "fixture,ff_out",
    [
        ("tiny_causal", "mlp.down_proj"),
        ("tiny_seq2seq", "DenseReluDense.wo"),
        ("tiny_encoder", "output.dense"),
    ],
)
def test_width_pruning_drops_the_units_that_do_nothing(fixture, ff_out, request, tmp_path):
    """Half of every feed-forward block's units are silenced (their output weights zeroed): width
    pruning to 50% must drop exactly those, so the narrower model computes what the source did."""
    import shutil

    source = load_model(str(request.getfixturevalue(fixture)), device="cpu")
    silenced = 0
    for name, module in source.model.named_modules():
        if name.endswith(ff_out) and module.in_features in (128,):
            with torch.no_grad():
                module.weight[:, 1::2] = 0  # units 1, 3, 5, ... contribute nothing
            silenced += 1
    assert silenced >= 2
    folder = tmp_path / "source"
    source.model.save_pretrained(folder, safe_serialization=True)
    source.tokenizer.save_pretrained(folder)
    narrow = scale_down(str(folder), None, tmp_path / "narrow", mlp_width=0.5)
    manifest = json.loads((narrow / "student.json").read_text())
    assert manifest["mlp_units"] == [128, 64] and manifest["mlp_width"] == 0.5
    smaller = load_model(str(narrow), device="cpu").model
    assert count_parameters(smaller)["total"] < count_parameters(source.model)["total"]
    ids = torch.tensor([[5, 17, 42, 9, 100]])
    inputs = {"input_ids": ids}
    if fixture == "tiny_seq2seq":
        inputs["decoder_input_ids"] = torch.tensor([[0, 7, 8]])
    if fixture == "tiny_encoder":
        inputs = {"input_ids": ids.unsqueeze(0).repeat(1, 2, 1)}
    torch.testing.assert_close(smaller(**inputs).logits, source.model(**inputs).logits)
    with pytest.raises(ValueError, match="between 0 and 1"):
        scale_down(str(folder), None, tmp_path / "bad", mlp_width=1.5)
    shutil.rmtree(folder)
