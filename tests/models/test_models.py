"""Model loading: offline copies, GGUF files, kinds, parameter counts, clear errors."""

from __future__ import annotations

import pytest

from tinystudent.hub import hub_reachable, offline_package
from tinystudent.models import OFFLINE_MODELS, count_parameters, load_model, resolve_model
from tinystudent.models.loading import model_kind


def test_offline_mode_is_detected(tiny_encoder, tmp_path, monkeypatch, request):
    """Offline mode (HF_HUB_OFFLINE=1 or TINYSTUDENT_OFFLINE=1) sends a Hub id to its offline copy
    in the cache without opening a connection or running pip; an id without an offline copy
    fails clearly. With the Hub reachable the same id goes to the Hub instead.

    The offline copy is a tiny encoder put where `offline_package` keeps a completed copy
    (`<cache>/packages/<name>-<version>/` with its `.complete` marker), so nothing is fetched.
    """
    import shutil
    import socket

    import huggingface_hub

    name = "sentence-transformers/all-MiniLM-L6-v2"
    copy = OFFLINE_MODELS[name]
    monkeypatch.setenv("TINYSTUDENT_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "cache" / "packages" / f"{copy.package}-{copy.version}"
    shutil.copytree(tiny_encoder, package / copy.member)
    (package / ".complete").write_text(f"{copy.package}=={copy.version}\n")
    request.addfinalizer(hub_reachable.cache_clear)  # the answer is remembered per process

    def no_network(*args, **kwargs):
        raise AssertionError(f"offline mode touched the network: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr("subprocess.run", no_network)  # `pip download` of an offline copy
    for variable in ("HF_HUB_OFFLINE", "TINYSTUDENT_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv(variable, "1")
        hub_reachable.cache_clear()
        assert hub_reachable() is False
        resolved = resolve_model(name)
        assert resolved.source["source"] == "offline", variable
        assert resolved.path == package / copy.member
        assert resolved.identity == f"offline:{copy.package}=={copy.version}"
        loaded = load_model(name, device="cpu")
        assert loaded.kind == "encoder"
        assert count_parameters(loaded.model) == count_parameters(load_model(str(tiny_encoder), device="cpu").model)
        with pytest.raises(FileNotFoundError, match="cannot be reached and no offline copy is known"):
            resolve_model("someone/unknown-model")

    # Online, the same id is fetched from the Hub and the offline copy is left alone.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TINYSTUDENT_OFFLINE")
    snapshot = tmp_path / "hub" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_encoder, snapshot)
    fetched = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: Connection())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kwargs: fetched.append(repo) or snapshot)
    hub_reachable.cache_clear()
    assert hub_reachable() is True
    resolved = resolve_model(name)
    assert fetched == [name] and resolved.source == {"source": "hub", "revision": "0123abcd"}


def test_gguf_file_by_path_reuses_the_one_conversion(smollm2):
    copy = OFFLINE_MODELS["HuggingFaceTB/SmolLM2-135M-Instruct"]
    gguf = offline_package(copy.package, copy.version, copy.member) / copy.member / copy.gguf_file
    resolved = resolve_model(str(gguf))
    assert resolved.identity.startswith("gguf:sha256:") and resolved.source["source"] == "gguf"
    assert resolved.path == smollm2.resolved.path  # converted once, found again by its hash
    assert (resolved.path / "model.safetensors").exists()


def test_smollm2_parameter_counts(smollm2):
    counts = count_parameters(smollm2.model)
    assert counts["total"] == 134_515_008
    assert counts["embedding"] == 49152 * 576  # tied input/output table, counted once
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]
    assert smollm2.kind == "causal" and smollm2.resolved.source["source"] == "offline"


def test_minilm_is_an_encoder_of_22_7m():
    loaded = load_model("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert loaded.kind == "encoder"
    assert round(count_parameters(loaded.model)["total"] / 1e6, 1) == 22.7


def test_kinds_of_tiny_models(tiny_causal, tiny_seq2seq, tiny_encoder):
    from transformers import AutoConfig

    assert [model_kind(AutoConfig.from_pretrained(p)) for p in (tiny_causal, tiny_seq2seq, tiny_encoder)] == [
        "causal",
        "seq2seq",
        "encoder",
    ]


@pytest.mark.parametrize(
    "name,message",
    [
        ("someone/unknown-model", "no offline copy is known"),
        ("./not/here", "no such folder or file"),
    ],
)
def test_unknown_models_fail_clearly(name, message):
    with pytest.raises(FileNotFoundError, match=message):
        resolve_model(name)


def test_folder_without_config_and_non_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=".gguf"):
        resolve_model(str(weights))


def test_folders_without_safe_weights_and_broken_gguf_fail_clearly(tiny_causal, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("TINYSTUDENT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_causal, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_model(str(folder), device="cpu")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="only pickled weights .* safetensors only"):
        load_model(str(folder), device="cpu")
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="cut.gguf: not a readable GGUF file .* truncated or corrupt"):
        load_model(str(broken), device="cpu")


def test_folder_identity_changes_with_weights(tiny_causal, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_causal, copy)
    before = resolve_model(str(copy)).identity
    assert before == resolve_model(str(tiny_causal)).identity
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "64 "))
    assert resolve_model(str(copy)).identity != before
