"""Safety: no pickle is ever loaded unsafely, no code that came with a model ever runs, and tokenizers
withstand hostile text."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import hf_scratch_gpt
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.modeling_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt.recipes import DataArguments, ModelArguments, PretrainingArguments, pretrain
from hf_scratch_gpt.tokenization import train_tokenizer

from support import QUIET

PACKAGE = Path(hf_scratch_gpt.__file__).parent


def test_the_package_never_unpickles_nor_trusts_remote_code():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", source, re.M), path
        assert "trust_remote_code=True" not in source, path
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, (path, call)


def test_resuming_loads_trainers_states_with_weights_only(run_folders, tmp_path, monkeypatch):
    """Trainer's checkpoints hold pickles (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin). A
    resume loads the first three through `torch.load(..., weights_only=True)`, which only rebuilds tensors
    and plain containers, and never loads training_args.bin."""
    output = tmp_path / "pretrain"
    shutil.copytree(run_folders["pretrain"], output)
    loads = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):
        loads.append((Path(f).name, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    # The arguments of conftest's pretraining run, resumed from its first checkpoint.
    pretrain(ModelArguments(tokenizer_kind="char", context_length=256, emb_dim=32, n_heads=2, n_layers=2),
             DataArguments(data=str(run_folders["root"] / "corpus.txt"), max_length=64, stride=64, sample_prompt="ham"),
             PretrainingArguments(output_dir=str(output), max_steps=8, eval_steps=4, save_steps=4, logging_steps=2,
                                  resume_from_checkpoint=str(output / "checkpoint-4"), **QUIET))
    assert {name for name, _ in loads} >= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert all(weights_only is True for _, weights_only in loads), loads
    assert "training_args.bin" not in {name for name, _ in loads}


def test_a_model_folders_own_code_never_runs(run_folders, tmp_path, capsys):
    """Our folders carry their code files for users without the package. With the package installed they
    are never executed, even when a folder's files have been tampered with: the installed classes load."""
    folder = tmp_path / "tampered"
    shutil.copytree(run_folders["pretrain"], folder)
    marker = tmp_path / "ran"
    for name in ("configuration_scratch_gpt.py", "modeling_scratch_gpt.py", "kernels_scratch_gpt.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + (folder / name).read_text())
    assert main(["generate", str(folder), "--prompt", "ham", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("ham")
    assert main(["convert", str(folder), str(tmp_path / "gpt2")]) == 0
    assert not marker.exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratch_gpt.ScratchGPTForCausalLM"
    assert hf_scratch_gpt.loading.load_model(str(folder), ScratchGPTForCausalLM).__class__ is ScratchGPTForCausalLM
    assert not marker.exists()


# Text as users' files never hold it, and as attackers write it.
HOSTILE = st.one_of(
    st.text(),  # any valid Unicode, NUL and control characters included
    st.text(alphabet=st.characters(min_codepoint=0x0300, max_codepoint=0x036F)),  # combining marks alone
    st.builds(lambda piece, n: piece * n, st.text(min_size=1, max_size=3), st.integers(1_000, 50_000)),  # long lines
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(HOSTILE, min_size=1, max_size=4), st.sampled_from(["bpe", "char"]))
def test_tokenizers_train_on_hostile_text_and_give_it_back(texts, kind):
    if not any(text.strip() for text in texts):
        with pytest.raises(ValueError, match="empty corpus"):
            train_tokenizer(texts, kind=kind, vocab_size=300)
        return
    tokenizer = train_tokenizer(texts, kind=kind, vocab_size=5000 if kind == "char" else 300)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert all(0 <= i < len(tokenizer) for i in ids)
        assert tokenizer.decode(ids) == text  # byte-level BPE loses nothing; char knows every trained character


@FUZZ
@given(st.text(min_size=1), st.integers(0, 200), st.text())
def test_lone_surrogates_are_refused_never_crash(text, position, rest):
    surrogate = chr(0xD800 + position % 0x800)
    hostile = text[: position % (len(text) + 1)] + surrogate + rest
    with pytest.raises(ValueError, match="is not valid Unicode: it holds a lone surrogate"):
        train_tokenizer(["fine", hostile], kind="char")
    tokenizer = _small_tokenizer()
    with pytest.raises((TypeError, ValueError)):  # the tokenizers library refuses it at its boundary
        tokenizer(hostile)


@FUZZ
@given(st.lists(st.integers(0, 299), max_size=200))
def test_decoding_any_ids_gives_text(ids):
    tokenizer = _small_tokenizer()
    assert isinstance(tokenizer.decode(ids), str)  # a cut UTF-8 sequence decodes to U+FFFD, never an error


_TOKENIZER = {}


def _small_tokenizer():
    if not _TOKENIZER:
        _TOKENIZER["bpe"] = train_tokenizer(["every effort moves you \u00e9\u4e2d\U0001F600 " * 50], vocab_size=300)
    return _TOKENIZER["bpe"]


def test_a_tokenizer_trained_on_hostile_text_saves_and_loads_the_same(tmp_path):
    texts = ["nul\x00byte", "x" * 200_000, "\u202eright-to-left\u202c", "e\u0301\u0301\u0301", "\U0001F600" * 1000,
             "\r\n\t\x0b\x0c", "<|endoftext|> in the text"]
    for kind in ("bpe", "char"):
        tokenizer = train_tokenizer(texts, kind=kind, vocab_size=400)
        tokenizer.save_pretrained(tmp_path / kind)
        loaded = AutoTokenizer.from_pretrained(tmp_path / kind)
        for text in texts:
            assert loaded(text).input_ids == tokenizer(text).input_ids
            assert loaded.decode(loaded(text).input_ids) == text
