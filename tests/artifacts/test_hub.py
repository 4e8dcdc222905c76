"""Output folders as Hub repositories: their files, their model cards, and pushing them (to a local
stand-in for the Hub, see fake_hub.py)."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_scratch_gpt.artifacts import REPO_PLACEHOLDER, push_to_hub
from hf_scratch_gpt.cli import main

from support import fake_hub

AUTO_MAP = {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}
MODEL_FILES = {"config.json", "model.safetensors", "configuration_scratch_gpt.py", "modeling_scratch_gpt.py",
               "kernels_scratch_gpt.py",
               "tokenizer.json", "tokenizer_config.json", "README.md"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md", "loss.png", "tokenizer.json"}


@pytest.fixture
def hub(monkeypatch):
    """The fake Hub as HF_ENDPOINT, online, with a valid HF_TOKEN."""
    server = fake_hub.FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", fake_hub.TOKEN)
    yield server
    server.close()


@pytest.mark.parametrize("kind, extra", [
    ("pretrain", {"generation_config.json", "loss.png", "eval_results.json", "training_args.json"}),
    ("classify", {"loss.png", "test_results.json", "training_args.json"}),
    ("instruct", {"generation_config.json", "chat_template.jinja", "loss.png", "test_results.json",
                  "test_responses.json", "training_args.json"}),
    ("convert", {"generation_config.json"}),
])
def test_every_output_folder_is_a_complete_hub_repository(run_folders, kind, extra):
    folder = run_folders[kind]
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert MODEL_FILES | extra <= names
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names)  # no pickles to share
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == AUTO_MAP and config["model_type"] == "scratch_gpt"
    if kind in ("classify", "instruct"):
        adapter = folder / "adapter"
        assert ADAPTER_FILES <= {p.name for p in adapter.iterdir()}
        adapter_config = json.loads((adapter / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == str(run_folders["pretrain"])
        assert f"base model `{run_folders['pretrain']}`" in (adapter / "README.md").read_text()
    if kind == "instruct":
        assert "### Instruction:" in (folder / "chat_template.jinja").read_text()


@pytest.mark.parametrize("kind, pipeline_tag, results", [
    ("pretrain", "text-generation", "eval_results.json"),
    ("classify", "text-classification", "test_results.json"),
    ("instruct", "text-generation", "test_results.json"),
    ("convert", "text-generation", None),
])
def test_cards_parse_validate_and_report_what_was_measured(run_folders, kind, pipeline_tag, results):
    folder = run_folders[kind]
    card = ModelCard.load(folder / "README.md")
    assert fake_hub.metadata_errors(card.content) == []  # the metadata check the Hub runs on upload
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", pipeline_tag, "apache-2.0")
    assert {"scratch_gpt", "custom_code", pipeline_tag} <= set(data.tags)
    assert data.base_model is None  # the bases here are local folders; they stay in the text
    auto = AutoModelForSequenceClassification if kind == "classify" else AutoModelForCausalLM
    n_params = auto.from_pretrained(folder).num_parameters()
    assert f"| parameters | {n_params:,} |" in card.text
    assert REPO_PLACEHOLDER in card.text and 'trust_remote_code=True' in card.text
    if results is None:
        assert data.eval_results is None and "GPT-2 checkpoint" in card.text
        return
    assert "![loss curve](loss.png)" in card.text and "| learning rate |" in card.text
    metrics = json.loads((folder / results).read_text())
    measured = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    expected = {("validation" if k.startswith("eval_") else "test", k.removeprefix("eval_").removeprefix("test_")): v
                for k, v in metrics.items()
                if not k.startswith("base_") and not k.endswith(("runtime", "per_second", "preparation_time", "epoch"))}
    assert measured == pytest.approx(expected) and len(expected) >= 2
    assert {r.dataset_name for r in data.eval_results} == {data.datasets[0]}
    for key, value in expected.items():
        assert f"{value:.4f}" in card.text, key
    assert "runtime" not in card.text
    adapter = folder / "adapter" / "README.md"
    if adapter.exists():
        adapter_card = ModelCard.load(adapter)
        assert fake_hub.metadata_errors(adapter_card.content) == []
        assert adapter_card.data.library_name == "peft" and adapter_card.data.eval_results == data.eval_results


def test_push_uploads_the_finished_folder_in_one_commit(run_folders, hub, capsys):
    folder = run_folders["classify"]
    assert main(["push", str(folder), "spam-classifier", "--private", "--commit-message", "First version"]) == 0
    assert capsys.readouterr().out.startswith(f"Pushed {folder} to {hub.url}/tester/spam-classifier/commit/")
    (commit,) = hub.commits
    assert (commit["repo"], commit["revision"], commit["message"]) == (
        "tester/spam-classifier", "main", "First version")
    assert hub.repos["tester/spam-classifier"]["private"] is True
    local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(commit["files"]) == {p for p in local if not p.startswith("checkpoint-")}  # checkpoints stay behind
    assert commit["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    readme = commit["files"]["README.md"].decode()  # the loading snippets name the repo
    assert readme == (folder / "README.md").read_text().replace(REPO_PLACEHOLDER, "tester/spam-classifier")
    assert 'subfolder="adapter"' in commit["files"]["adapter/README.md"].decode()
    assert hub.validated == 1

    # Again, to a new branch of the existing repo: it keeps its visibility and its main branch.
    push_to_hub(folder, "tester/spam-classifier", revision="v2")
    assert hub.commits[-1]["revision"] == "v2"
    assert set(hub.repos["tester/spam-classifier"]["branches"]) == {"main", "v2"}


@pytest.mark.parametrize("setup, repo_id, message", [
    ({"HF_TOKEN": None}, "name", "No Hugging Face token: run `hf auth login`"),
    ({"HF_TOKEN": "hf_wrong"}, "name", "rejected the token"),
    ({"offline": True}, "name", "HF_HUB_OFFLINE is set"),
    ({"endpoint": "http://127.0.0.1:9"}, "name", "Cannot reach the Hub at http://127.0.0.1:9"),
    ({}, "a/b/c", "'a/b/c' is not a valid Hub repo id"),
    ({"folder": "empty"}, "name", "holds no config.json or adapter_config.json"),
])
def test_push_errors_are_one_line_and_touch_nothing(run_folders, hub, monkeypatch, tmp_path, capsys, setup,
                                                    repo_id, message):
    folder = run_folders["pretrain"]
    if "HF_TOKEN" in setup:
        if setup["HF_TOKEN"] is None:
            monkeypatch.delenv("HF_TOKEN")
            monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
            monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
        else:
            monkeypatch.setenv("HF_TOKEN", setup["HF_TOKEN"])
    if setup.get("offline"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if "endpoint" in setup:
        monkeypatch.setattr(constants, "ENDPOINT", setup["endpoint"])
    if "folder" in setup:
        folder = tmp_path / setup["folder"]
        folder.mkdir()
    assert main(["push", str(folder), repo_id]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert hub.repos == {} and hub.commits == []


def test_a_failed_upload_deletes_the_repo_it_created_and_keeps_an_existing_one(run_folders, hub):
    hub.fail_commits = True
    with pytest.raises(ValueError, match="nothing was committed and the new repo was deleted: Server error '500"):
        push_to_hub(run_folders["pretrain"], "fresh")
    assert hub.repos == {}
    hub.repos["tester/kept"] = {"private": False, "branches": {"main": {"old.txt": b"x"}}}
    with pytest.raises(ValueError, match="nothing was committed: "):
        push_to_hub(run_folders["pretrain"], "kept")
    assert hub.repos["tester/kept"]["branches"]["main"] == {"old.txt": b"x"}


def test_recipes_push_the_finished_run(tmp_path, hub, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("every effort moves you forward, said the painter.\n" * 60)
    out = tmp_path / "run"
    flags = ["pretrain", "--data", str(corpus), "--tokenizer_kind", "char", "--context_length", "32", "--emb_dim",
             "16", "--n_heads", "2", "--n_layers", "1", "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2",
             "--output_dir", str(out), "--disable_tqdm", "true", "--push_to_hub", "--hub_model_id", "me/tiny"]
    assert main(flags) == 0
    assert f"Pushed {out} to {hub.url}/me/tiny/commit/" in capsys.readouterr().out
    (commit,) = hub.commits  # one commit, at the end: the checkpoints were not pushed on the way
    assert {"README.md", "loss.png", "model.safetensors", "config.json"} <= set(commit["files"])
    assert not any(name.startswith("checkpoint-") for name in commit["files"])
    assert "me/tiny" in commit["files"]["README.md"].decode()
    assert json.loads((out / "training_args.json").read_text())["push_to_hub"] is True


def test_recipes_check_the_push_before_training(tmp_path, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    out = tmp_path / "run"
    assert main(["pretrain", "--output_dir", str(out), "--push_to_hub", "--max_steps", "1"]) == 1
    assert "rejected the token" in capsys.readouterr().err
    assert not out.exists()


def test_a_hub_base_model_is_named_in_the_metadata(tmp_path):
    from hf_scratch_gpt import ScratchGPTForCausalLM
    from hf_scratch_gpt.artifacts import write_card
    from hf_scratch_gpt.convert import conversion_card

    from support import tiny_config

    model = ScratchGPTForCausalLM(tiny_config())
    card = write_card(tmp_path, conversion_card(model, "gpt2-scratch", "openai-community/gpt2", "scratch_gpt"))
    assert ModelCard.load(tmp_path / "README.md").data.base_model == "openai-community/gpt2"
    assert card.data.model_name == "gpt2-scratch" and "# gpt2-scratch" in card.text
    local = write_card(tmp_path, conversion_card(model, "m", str(tmp_path), "scratch_gpt"))
    assert local.data.base_model is None and f"`{tmp_path}`" in local.text


def test_a_non_editable_install_ships_the_card_templates(tmp_path):
    """The templates live in the top-level model_cards/ folder; the wheel carries them as package data."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(root)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("hf_scratch_gpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"hf_scratch_gpt/model_cards/{p.name}" for p in (root / "model_cards").glob("*.md")}
    assert len(templates) >= 4 and templates <= names  # one template per kind of card, each shipped
