"""Fixtures the tests share: tiny models, and one output folder of every kind the package writes."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the Hub: they build their own tiny models and data
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-scratch-gpt-tests-")  # no shared cache

import pytest

import hf_scratch_gpt

from support import INSTRUCTIONS, QUIET, SMS, VOCAB, classification_run, tiny_gpt2


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def model(gpt2):
    return hf_scratch_gpt.from_gpt2(gpt2)


@pytest.fixture(scope="session")
def run_folders(tmp_path_factory) -> dict:
    """One tiny output folder of every kind this package writes, made the way users make them: `pretrain`,
    `classify` and `instruct` (LoRA, each with `adapter/`) and `convert` (GPT-2 -> ours). For the tests of
    what users then do with them."""
    import json

    from hf_scratch_gpt.cli import main
    from hf_scratch_gpt.recipes import (
        DataArguments,
        InstructionArguments,
        InstructionTrainingArguments,
        ModelArguments,
        PretrainingArguments,
        classify,
        instruct,
        pretrain,
    )
    from hf_scratch_gpt.tokenization import ALPACA_PREAMBLE, train_tokenizer

    root = tmp_path_factory.mktemp("runs")
    sms = root / "sms.tsv"
    sms.write_text("Label\tSMS\n" + "".join(f"{label}\t{text} {i}\n" for i in range(8) for label, text in SMS))
    instructions = root / "instructions.json"
    instructions.write_text(json.dumps(INSTRUCTIONS * 4))
    corpus = root / "corpus.txt"
    corpus.write_text((ALPACA_PREAMBLE + "### Instruction:\nInput:\nResponse:\n" + sms.read_text()
                       + instructions.read_text() + "\n") * 3)

    pretrain(ModelArguments(tokenizer_kind="char", context_length=256, emb_dim=32, n_heads=2, n_layers=2),
             DataArguments(data=str(corpus), max_length=64, stride=64, sample_prompt="ham"),
             PretrainingArguments(output_dir=str(root / "pretrain"), max_steps=8, eval_steps=4, save_steps=4,
                                  logging_steps=2, **QUIET))
    base = str(root / "pretrain")
    classify(*classification_run(root, root / "classify"))
    instruct(InstructionArguments(model=base, data=str(instructions), max_new_tokens=6),
             InstructionTrainingArguments(output_dir=str(root / "instruct"), num_train_epochs=1, learning_rate=1e-2,
                                          logging_steps=2, **QUIET))

    gpt2_dir = root / "gpt2"
    tiny_gpt2().save_pretrained(gpt2_dir)
    tokenizer = train_tokenizer([corpus.read_text()[:2000]], kind="char")
    assert len(tokenizer) <= VOCAB
    tokenizer.save_pretrained(gpt2_dir)
    assert main(["convert", str(gpt2_dir), str(root / "convert")]) == 0
    return {kind: root / kind for kind in ("pretrain", "classify", "instruct", "convert")} | {"root": root}
