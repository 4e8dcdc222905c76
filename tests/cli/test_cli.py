"""The `hf-scratch-gpt` command: generate, chat, convert and the table of commands, end to end."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel, GPT2LMHeadModel

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.tokenization import train_tokenizer

from support import VOCAB, tiny_gpt2


@pytest.fixture
def model_dir(tmp_path):
    tokenizer = train_tokenizer(["Hello there, hello world. " * 20], vocab_size=270)
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=64, emb_dim=32, n_heads=2, n_layers=1,
                              eos_token_id=tokenizer.eos_token_id)
    model = ScratchGPTForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return model, tokenizer, tmp_path / "model"


def test_generate_prints_the_models_greedy_continuation(model_dir, capsys):
    model, tokenizer, folder = model_dir
    assert main(["generate", str(folder), "--prompt", "Hello", "--max-new-tokens", "6"]) == 0
    inputs = tokenizer("Hello", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert capsys.readouterr().out.rstrip("\n") == tokenizer.decode(expected[0], skip_special_tokens=True).rstrip("\n")


def test_generate_streams_and_samples(model_dir, capsys):
    _, _, folder = model_dir
    args = ["generate", str(folder), "--prompt", "Hi", "--max-new-tokens", "5", "--temperature", "0.8",
            "--top-k", "20", "--top-p", "0.95", "--seed", "3", "--stream"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("Hi")


def test_convert_gpt2_to_scratch_and_back(tmp_path, capsys):
    gpt2 = tiny_gpt2()
    gpt2.save_pretrained(tmp_path / "gpt2")
    assert main(["convert", str(tmp_path / "gpt2"), str(tmp_path / "scratch")]) == 0
    assert json.loads((tmp_path / "scratch" / "config.json").read_text())["model_type"] == "scratch_gpt"
    assert not (tmp_path / "scratch" / "tokenizer.json").exists()  # a bare checkpoint: the weights alone
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "scratch")
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        assert (ours(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-4
    assert main(["convert", str(tmp_path / "scratch"), str(tmp_path / "back")]) == 0
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back")
    for key, tensor in gpt2.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hf_scratch_gpt.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)


def test_errors_are_one_line_and_leave_nothing_behind(tmp_path):
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    result = cli("convert", str(tmp_path / "bert"), str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"hf-scratch-gpt convert: error: {tmp_path / 'bert'} holds a 'bert' model; give a model this package "
        "saved, or a GPT-2 one."
    ]
    assert not (tmp_path / "out").exists()

    missing = cli("generate", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr

    bad_flag = cli("generate", str(tmp_path / "bert"), "--max-new-tokens", "0")
    assert bad_flag.returncode == 2 and "--max_new_tokens=0 is invalid: it must be positive" in bad_flag.stderr

    debug = cli("generate", str(tmp_path / "nowhere"), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_convert_refuses_a_non_empty_output(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = cli("convert", str(tmp_path / "gpt2"), str(tmp_path / "out"))
    assert result.returncode == 1 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_usage_without_a_command():
    result = cli()
    assert result.returncode == 2 and "generate" in result.stdout and "convert" in result.stdout
