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
