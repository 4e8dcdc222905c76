import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the Hub: they build their own tiny models and data
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-scratch-gpt-tests-")  # no shared cache

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig

VOCAB = 101


def tiny_config(**overrides) -> ScratchGPTConfig:
    fields = dict(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                  eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)
    return ScratchGPTConfig(**{**fields, **overrides})


def tiny_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A randomly initialised small GPT-2, with biases and norms made non-trivial so that any
    misplaced tensor shows in the logits."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    model = GPT2LMHeadModel(GPT2Config(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def model(gpt2):
    return hf_scratch_gpt.from_gpt2(gpt2)


def left_padded(batch_rows: list[list[int]], pad: int = VOCAB - 1):
    """input_ids and attention_mask of rows padded on the left to a common length."""
    width = max(map(len, batch_rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch_rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch_rows])
    return ids, mask


SMS = [("spam", "WIN a FREE prize now!!! call 0800"), ("spam", "URGENT!!! claim your FREE cash"),
       ("ham", "see you at lunch"), ("ham", "ok i am on my way home"), ("ham", "can we meet later today?")]
INSTRUCTIONS = [{"instruction": "Repeat the word.", "input": word, "output": word}
                for word in ("apple", "river", "stone", "cloud", "tiger")] + [
               {"instruction": "Say hello.", "input": "", "output": "Hello!"}]


QUIET = dict(disable_tqdm=True, dataloader_pin_memory=False, report_to="none", seed=0)


def classification_run(root, output_dir, **training):
    """The arguments of `run_folders`' classification run (LoRA, 2 epochs, a checkpoint each)."""
    from hf_scratch_gpt.recipes import ClassificationArguments, ClassificationTrainingArguments

    args = ClassificationArguments(model=str(root / "pretrain"), data=str(root / "sms.tsv"), text_column="SMS",
                                   label_column="Label")
    return args, ClassificationTrainingArguments(output_dir=str(output_dir), num_train_epochs=2, logging_steps=2,
                                                 learning_rate=1e-2, **{**QUIET, **training})


@pytest.fixture(scope="session")
def run_folders(tmp_path_factory) -> dict:
    """One tiny output folder of every kind this package writes, made the way users make them: `pretrain`,
    `classify` and `instruct` (LoRA, each with `adapter/`) and `convert` (GPT-2 -> ours). For the tests of
    what users then do with them."""
    import json

    from hf_scratch_gpt.cli import main
    from hf_scratch_gpt.recipes import (DataArguments, InstructionArguments, InstructionTrainingArguments,
                                        ModelArguments, PretrainingArguments, classify, instruct, pretrain)
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
