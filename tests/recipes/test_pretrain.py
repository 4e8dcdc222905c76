"""Pretraining (chapter 5): the recipe from Python and the shell, its folder and card, resuming, streaming,
precision."""

import json
import math
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.corpus import build_lm_dataset, load_corpus
from hf_scratch_gpt.recipes import ModelArguments, pretrain
from hf_scratch_gpt.recipes.arguments import native_bf16

from support import KILLED_RUN, TEXT, tiny_run


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_model_arguments_are_the_configs_shape_fields():
    """ModelArguments writes out the fields of ScratchGPTConfig that a new model's shape sets: every one of them
    (the tokenizer sets the vocabulary and special ids; use_cache and classifier_bias are not pretraining's), with
    the config's defaults but for SMALL_MODEL's, and nothing else."""
    import dataclasses
    import inspect

    from hf_scratch_gpt.recipes.pretraining import SHAPE_FIELDS, SMALL_MODEL

    not_shape = {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "use_cache", "classifier_bias"}
    config_fields = [name for name in inspect.get_annotations(ScratchGPTConfig) if name not in not_shape]
    assert list(SHAPE_FIELDS) == config_fields
    defaults = {f.name: f.default for f in dataclasses.fields(ModelArguments)}
    for name in SHAPE_FIELDS:
        assert defaults[name] == SMALL_MODEL.get(name, getattr(ScratchGPTConfig, name)), name
    assert set(defaults) - set(SHAPE_FIELDS) == {"model_name_or_path", "tokenizer_name_or_path", "tokenizer_kind",
                                                "tokenizer_vocab_size"}


def test_pretrain_writes_a_complete_loadable_folder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = pretrain(*tiny_run(corpus, out))
    names = {p.name for p in out.iterdir()}
    for expected in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                     "configuration_scratch_gpt.py", "modeling_scratch_gpt.py", "kernels_scratch_gpt.py", "loss.png",
                     "README.md",
                     "eval_results.json", "training_args.json"):
        assert expected in names, expected
    assert "training_args.bin" not in names  # no pickle in the shared folder
    # the recipe says what it wrote: the final folder, not the checkpoints beside it
    assert set(metrics.files) == {p.name for p in out.iterdir() if p.is_file()} and "run.yaml" in metrics.files
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-8", "checkpoint-16"}
    assert (out / "checkpoint-16" / "model.safetensors").is_file()

    # The saved model reproduces the reported validation loss on the same windows.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, ScratchGPTForCausalLM) and len(tokenizer) == model.config.vocab_size
    validation = build_lm_dataset(load_corpus(corpus), tokenizer, 32, 16)["validation"]
    with torch.no_grad():
        ids = torch.tensor(validation[:]["input_ids"])
        loss = model(ids, labels=ids).loss.item()
    assert loss == pytest.approx(metrics["eval_loss"], abs=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    assert json.loads((out / "eval_results.json").read_text()) == metrics
    # The default precision: on a CPU with native bf16, the faster of bf16 autocast and fp32 in a timed step at the
    # run's shape (batch 8 x 32 here), which the card reports with its times; fp32 on other CPUs.
    bf16 = json.loads((out / "training_args.json").read_text())["bf16"]
    precision = re.search(r"\| precision \| (.+) \|", (out / "README.md").read_text())[1]
    if native_bf16(on_cpu=True):
        times = re.fullmatch(r"(.+) \(timed on this CPU: a training step of 8 x 32 tokens took (\d+) ms in bf16 "
                             r"autocast, (\d+) ms in fp32\)", precision)
        bf16_ms, fp32_ms = int(times[2]), int(times[3])  # rounded: the rule's margin of 95%, give or take 1 ms
        assert (bf16_ms <= 0.95 * fp32_ms + 1) if bf16 else (bf16_ms >= 0.95 * fp32_ms - 1)
    else:
        assert bf16 is False and precision == "fp32"
    assert precision.startswith("bf16 autocast, fp32 weights" if bf16 else "fp32")

    history = json.loads((out / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0]
    assert any("eval_perplexity" in e for e in history)
    printed = capsys.readouterr().out
    assert printed.count("[step 8] 'Line") == printed.count("[step 16] 'Line") == 1  # a sample at each evaluation
    # The last step's evaluation is the final model's: reported as it was logged, not evaluated a second time.
    assert metrics == {key: value for key, value in history[-1].items() if key != "step"}

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "custom_code" in card.data.tags
    assert f"{metrics['eval_loss']:.4f}" in card.text and "| n_layers | 2 |" in card.text


def test_a_run_that_never_evaluated_is_evaluated_at_the_end(corpus, tmp_path):
    out = tmp_path / "run"
    metrics = pretrain(*tiny_run(corpus, out, max_steps=12, eval_strategy="no", load_best_model_at_end=False))
    history = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    assert not [e for e in history if "eval_loss" in e]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    validation = build_lm_dataset(load_corpus(corpus), AutoTokenizer.from_pretrained(out), 32, 16)["validation"]
    with torch.no_grad():
        ids = torch.tensor(validation[:]["input_ids"])
        assert model(ids, labels=ids).loss.item() == pytest.approx(metrics["eval_loss"], abs=1e-4)
    assert metrics["epoch"] > history[-1]["epoch"] and "eval_perplexity" in metrics


def cli_args(corpus, output_dir) -> list[str]:
    return ["--data", str(corpus), "--output_dir", str(output_dir), "--tokenizer_kind", "char", "--context_length",
            "32", "--emb_dim", "32", "--n_heads", "2", "--n_layers", "2", "--max_length", "32", "--stride", "16",
            "--max_steps", "16", "--per_device_train_batch_size", "8", "--eval_steps", "8", "--save_steps", "8",
            "--logging_steps", "4", "--seed", "7", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


def test_a_run_killed_between_checkpoints_resumes_to_the_same_model(corpus, tmp_path, capsys, caplog):
    assert main(["pretrain", *cli_args(corpus, tmp_path / "straight")]) == 0

    halted = tmp_path / "halted"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, "12", *cli_args(corpus, halted)], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in halted.iterdir()) == ["checkpoint-8"]  # killed at step 12: nothing else written
    # A kill while checkpoint-12 was being written: Trainer writes trainer_state.json last, here cut short.
    shutil.copytree(halted / "checkpoint-8", halted / "checkpoint-12")
    state = halted / "checkpoint-12" / "trainer_state.json"
    state.write_text(state.read_text()[:100])

    assert main(["pretrain", *cli_args(corpus, halted), "--resume_from_checkpoint", "last"]) == 0
    # Resuming and loading the best checkpoint at the end both reload a checkpoint without the tied head.
    capsys.readouterr()
    assert "missing keys" not in caplog.text
    straight_metrics = json.loads((tmp_path / "straight" / "eval_results.json").read_text())
    resumed_metrics = json.loads((halted / "eval_results.json").read_text())
    assert resumed_metrics["eval_loss"] == pytest.approx(straight_metrics["eval_loss"], abs=1e-5)
    straight_weights = load_file(tmp_path / "straight" / "model.safetensors")
    for name, tensor in load_file(halted / "model.safetensors").items():
        torch.testing.assert_close(tensor, straight_weights[name], atol=1e-5, rtol=0)
    history = json.loads((halted / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [4, 8, 12, 16]  # the log spans both halves of the run


def test_a_resumed_run_keeps_the_precision_it_started_in(corpus, tmp_path, monkeypatch):
    """The default precision is timed where a run starts; resumed on another CPU, or after the timings' cache was
    cleared, the run goes on in the precision its checkpoint was trained in."""
    from hf_scratch_gpt.recipes import arguments, runs

    monkeypatch.setattr(arguments, "native_bf16", lambda on_cpu: True)
    answers = iter([(True, "timed where it started"), (False, "timed where it resumed")])
    monkeypatch.setattr(runs, "measured_bf16", lambda model, rows, length: next(answers))
    out = tmp_path / "run"
    pretrain(*tiny_run(corpus, out, max_steps=8))
    pretrain(*tiny_run(corpus, out, max_steps=16, resume_from_checkpoint="last"))
    assert json.loads((out / "training_args.json").read_text())["bf16"] is True
    assert "| precision | bf16 autocast, fp32 weights (timed where it started) |" in (out / "README.md").read_text()
    assert next(answers)[1] == "timed where it resumed"  # not timed again


def test_resuming_needs_a_complete_checkpoint(corpus, tmp_path, capsys):
    assert main(["pretrain", *cli_args(corpus, tmp_path / "none"), "--resume_from_checkpoint", "last"]) == 1
    assert "holds no complete checkpoint to resume from; start the run without the flag" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    partial = tmp_path / "partial" / "checkpoint-8"
    partial.mkdir(parents=True)
    assert main(["pretrain", *cli_args(corpus, tmp_path / "partial"), "--resume_from_checkpoint", str(partial)]) == 1
    assert "is not a complete checkpoint (a checkpoint-N folder with its trainer_state.json)" in capsys.readouterr().err


def test_continue_from_a_saved_model(corpus, tmp_path):
    first = tmp_path / "first"
    pretrain(*tiny_run(corpus, first))
    model_args = ModelArguments(model_name_or_path=str(first))
    _, data_args, training_args = tiny_run(corpus, tmp_path / "second", max_steps=8)
    metrics = pretrain(model_args, data_args, training_args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "second").config.emb_dim == 32
    assert metrics["eval_loss"] > 0


def _missing(corpus, out):
    return {"data": str(corpus.parent / "missing.txt")}


def _empty(corpus, out):
    corpus.write_text("")
    return {}


def _not_utf8(corpus, out):
    corpus.write_bytes(b"ok\n\x80bad")
    return {}


def _too_short(corpus, out):
    corpus.write_text("short")
    return {}


def _output_is_a_file(corpus, out):
    out.write_text("file")
    return {}


def _output_holds_another_model(corpus, out):
    ScratchGPTConfig(vocab_size=50, emb_dim=16, n_heads=2, n_layers=1).save_pretrained(out)
    return {}


@pytest.mark.parametrize(
    "setup, message",
    [
        (_missing, "does not exist"),
        (_empty, "is empty"),
        (_not_utf8, r"corpus.txt is not UTF-8 text: byte 3 is 0x80"),
        (_too_short, "fewer than one window"),
        (lambda corpus, out: {"max_length": 64}, "max_length=64 is longer than the model's context_length=32"),
        (lambda corpus, out: {"stride": 0}, "stride=0 is invalid"),
        (_output_is_a_file, "is a file"),
        (_output_holds_another_model, "already holds a different model"),
    ],
)
def test_bad_input_fails_before_writing(corpus, tmp_path, setup, message):
    out = tmp_path / "out"
    model_args, data_args, training_args = tiny_run(corpus, out)
    for key, value in setup(corpus, out).items():
        setattr(data_args, key, value)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.exists()
    with pytest.raises(ValueError, match=message):
        pretrain(model_args, data_args, training_args)
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.exists()) == before


def test_tokenizer_larger_than_the_model_is_refused(corpus, tmp_path):
    small = tmp_path / "small"
    ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=10, context_length=32, emb_dim=16, n_heads=2,
                                           n_layers=1)).save_pretrained(small)
    _, data_args, training_args = tiny_run(corpus, tmp_path / "out")
    pretrain(*tiny_run(corpus, tmp_path / "tok", max_steps=1))
    model_args = ModelArguments(model_name_or_path=str(small), tokenizer_name_or_path=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the vocabulary of the model in .* holds 10"):
        pretrain(model_args, data_args, training_args)
    assert not (tmp_path / "out").exists()


def test_cli_pretrain_then_generate(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["pretrain", "--data", str(corpus), "--output_dir", str(out), "--tokenizer_kind", "char",
            "--context_length", "32", "--emb_dim", "32", "--n_heads", "2", "--n_layers", "2", "--max_steps", "4",
            "--eval_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3", "--disable_tqdm", "true",
            "--activation_function", "gelu", "--tie_word_embeddings", "false", "--bias", "false"]
    assert main(args) == 0
    assert f"Saved the model to {out}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["activation_function"], config["tie_word_embeddings"], config["bias"]) == ("gelu", False, False)
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["learning_rate"] == 3e-3 and saved["max_steps"] == 4  # Trainer's own flags, parsed for us
    assert main(["generate", str(out), "--prompt", "Line", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("Line")
    assert main(["pretrain", "--data", str(tmp_path / "nowhere.txt"), "--output_dir", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_without_a_validation_split_nothing_is_evaluated(corpus, tmp_path):
    model_args, data_args, training_args = tiny_run(corpus, tmp_path / "run", max_steps=4)
    data_args.validation_fraction = 0.0
    assert pretrain(model_args, data_args, training_args) == {}
    assert "No validation split was held out." in (tmp_path / "run" / "README.md").read_text()
    assert (tmp_path / "run" / "model.safetensors").is_file()
