"""What the tests share: tiny models and data of their own (no test reaches the Hub or reads beside the
repository), and the helpers in this package's modules: `conformance` (generate() in every mode and prompt
shape), `fake_hub` (a local stand-in for the Hub's HTTP API) and `removed_cache_alias` (a transformers without
the old cache name)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

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


def enable_checkpointing(model) -> None:
    """Gradient checkpointing by the installed release's name (`activation_checkpointing_enable` from 5.24)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def memorised(model, ids: list[int], context: int, lr: float):
    """`model` trained on `ids`, in windows of `context`, until it recites them (a second): its greedy choices are then
    clear, where a random network's two best logits can lie closer together than two implementations' rounding."""
    windows = torch.tensor(ids[: len(ids) // context * context]).view(-1, context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(60):
        model(windows, labels=windows).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


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


TEXT = "".join(f"Line {i}: every effort moves you, said the painter to the critic.\n" for i in range(120))


def tiny_run(corpus, output_dir, **training):
    """The arguments of a 16-step pretraining run of a tiny character model on `corpus`."""
    from hf_scratch_gpt.recipes import DataArguments, ModelArguments, PretrainingArguments

    model_args = ModelArguments(tokenizer_kind="char", context_length=32, emb_dim=32, n_heads=2, n_layers=2)
    data_args = DataArguments(data=str(corpus), max_length=32, stride=16, sample_prompt="Line")
    settings = dict(output_dir=str(output_dir), max_steps=16, per_device_train_batch_size=8, eval_steps=8,
                    save_steps=8, logging_steps=4, disable_tqdm=True, dataloader_pin_memory=False, seed=7)
    return model_args, data_args, PretrainingArguments(**{**settings, **training})


# Runs the CLI's pretrain command in a subprocess that SIGKILLs itself at the end of a given step.
KILLED_RUN = """
import os, signal, sys
from transformers import HfArgumentParser, TrainerCallback
from hf_scratch_gpt.cli import load_command
from hf_scratch_gpt.recipes import pretrain

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

flags = HfArgumentParser(load_command("pretrain").flags).parse_args_into_dataclasses(sys.argv[2:])
pretrain(*flags, callbacks=[KillAt()])
"""


def assert_close_in_bf16(bf16, fp32):
    """Losses within 1%; each gradient within bf16's rounding of its own scale, pointing the same way."""
    loss16, grads16 = bf16
    loss32, grads32 = fp32
    assert loss16.dtype is torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    assert grads16.keys() == grads32.keys() and grads32
    for name, grad in grads32.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(grads16[name], grad, atol=0.05 * scale, rtol=0, msg=name)
        cosine = torch.nn.functional.cosine_similarity(grads16[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def alpaca_char_tokenizer(rows: list[dict]):
    """A character tokenizer knowing every character of `rows` and of the Alpaca prompt, with its chat template."""
    import json

    from hf_scratch_gpt.tokenization import ALPACA_CHAT_TEMPLATE, ALPACA_PREAMBLE, train_tokenizer

    text = ALPACA_PREAMBLE + "### Instruction: Input: Response:\n" + " ".join(json.dumps(r) for r in rows)
    tokenizer = train_tokenizer([text], kind="char")
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(path, tokenizer):
    """A tiny untrained causal LM of ours for `tokenizer` (context 256, no dropout), saved with it in `path`."""
    from hf_scratch_gpt import ScratchGPTForCausalLM

    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=256, emb_dim=32, n_heads=2, n_layers=2,
                              drop_rate=0.0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ScratchGPTForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
