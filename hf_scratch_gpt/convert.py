"""GPT-2 <-> ScratchGPT, weight for weight (chapter 5's `load_weights_into_gpt`, both ways), and the `convert`
command, which also takes the book's checkpoints (`book.py`) both ways.

GPT-2 stores its linear layers as `Conv1D` with (in, out) weights; ours are `nn.Linear` with
(out, in), so every projection is transposed. Nothing else changes: the round trip is exact.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

from .artifacts import Card, new_folder, write_card
from .artifacts.folders import check_new_folder
from .command import Command
from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM

logger = logging.get_logger(__name__)

# (ours, GPT-2's, transposed?) inside each block: GPT-2's Conv1D weights are (in, out), ours (out, in)
_BLOCK_PARAMS = [
    (f"{ours}.{param}", f"{theirs}.{param}", conv1d and param == "weight")
    for ours, theirs, conv1d in [("norm1", "ln_1", False), ("att.qkv", "attn.c_attn", True),
                                 ("att.out_proj", "attn.c_proj", True), ("norm2", "ln_2", False),
                                 ("ff.fc_in", "mlp.c_fc", True), ("ff.fc_out", "mlp.c_proj", True)]
    for param in ("weight", "bias")
]


def _param_map(n_layers: int, tied: bool) -> list[tuple[str, str, bool]]:
    """Every (ScratchGPTForCausalLM key, GPT2LMHeadModel key, transposed?) pair."""
    pairs = [
        ("model.tok_emb.weight", "transformer.wte.weight", False),
        ("model.pos_emb.weight", "transformer.wpe.weight", False),
        ("model.final_norm.weight", "transformer.ln_f.weight", False),
        ("model.final_norm.bias", "transformer.ln_f.bias", False),
    ]
    for i in range(n_layers):
        pairs += [(f"model.trf_blocks.{i}.{ours}", f"transformer.h.{i}.{theirs}", t)
                  for ours, theirs, t in _BLOCK_PARAMS]
    if not tied:
        pairs.append(("lm_head.weight", "lm_head.weight", False))
    return pairs


# (ours, GPT-2's) names of the config fields that carry over as they are, both ways
_CONFIG_NAMES = [("vocab_size", "vocab_size"), ("context_length", "n_positions"), ("emb_dim", "n_embd"),
                 ("n_heads", "n_head"), ("n_layers", "n_layer"), ("layer_norm_epsilon", "layer_norm_epsilon"),
                 ("initializer_range", "initializer_range"), ("tie_word_embeddings", "tie_word_embeddings")]

# GPT-2's "gelu_new" is the tanh GELU written out in Python; PyTorch's kernel computes the same function.
_FUSED_TWIN = {"gelu_new": "gelu_pytorch_tanh"}
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")  # GPT-2's, the book's and llama.cpp's GELU: the tanh approximation
_GPT2_NAME = {fused: gpt2 for gpt2, fused in _FUSED_TWIN.items()}


def _check_gpt2_config(config) -> None:
    """Refuse what our architecture cannot represent, rather than converting it wrongly."""
    if getattr(config, "model_type", None) != "gpt2":
        raise ValueError(
            f"Expected a GPT-2 checkpoint (model_type 'gpt2'), got model_type "
            f"{getattr(config, 'model_type', None)!r}; only the GPT-2 family (gpt2 ... gpt2-xl, distilgpt2) converts."
        )
    unsupported = {
        "n_inner": (config.n_inner, config.n_inner in (None, 4 * config.n_embd)),
        "scale_attn_weights": (config.scale_attn_weights, config.scale_attn_weights),
        "scale_attn_by_inverse_layer_idx": (config.scale_attn_by_inverse_layer_idx,
                                            not config.scale_attn_by_inverse_layer_idx),
        "add_cross_attention": (config.add_cross_attention, not config.add_cross_attention),
    }
    for name, (value, ok) in unsupported.items():
        if not ok:
            raise ValueError(f"GPT-2 config has {name}={value!r}, which ScratchGPT's architecture does not have.")


def from_gpt2(model_or_path, **from_pretrained_kwargs) -> ScratchGPTForCausalLM:
    """A `ScratchGPTForCausalLM` with the weights of a `GPT2LMHeadModel`, or of a GPT-2 folder or Hub id."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        _check_gpt2_config(AutoConfig.from_pretrained(model_or_path))
        gpt2 = GPT2LMHeadModel.from_pretrained(model_or_path, **from_pretrained_kwargs)
    elif isinstance(model_or_path, GPT2LMHeadModel):
        gpt2 = model_or_path
    else:
        raise ValueError(
            f"from_gpt2 takes a GPT2LMHeadModel or a path / Hub id of one, got {type(model_or_path).__name__}."
        )
    c = gpt2.config
    _check_gpt2_config(c)
    config = ScratchGPTConfig(
        **{ours: getattr(c, theirs) for ours, theirs in _CONFIG_NAMES},
        activation_function=_FUSED_TWIN.get(c.activation_function, c.activation_function),
        drop_rate=c.resid_pdrop, qkv_bias=True, bias=True, **_special_token_ids(c),
    )
    model = ScratchGPTForCausalLM(config).to(gpt2.dtype)
    theirs = gpt2.state_dict()
    pairs = _param_map(c.n_layer, c.tie_word_embeddings)
    state = {ours: theirs[key].t() if t else theirs[key] for ours, key, t in pairs}
    load_exactly(model, state)
    model.generation_config = gpt2.generation_config
    return model.train(gpt2.training)


def _special_token_ids(config) -> dict:
    """GPT-2's special token ids; one outside the vocabulary (GPT2Config's default 50256 on a smaller
    vocabulary) could never be produced, so it becomes None."""
    ids = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < config.vocab_size:
            logger.warning(f"GPT-2 config's {name}={value} is outside its vocabulary of {config.vocab_size}: dropped.")
            value = None
        ids[name] = value
    return ids


def to_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """A `GPT2LMHeadModel` with the weights of a `ScratchGPTForCausalLM`."""
    if not isinstance(model, ScratchGPTForCausalLM):
        raise ValueError(f"to_gpt2 takes a ScratchGPTForCausalLM, got {type(model).__name__}.")
    c = model.config
    config = GPT2Config(
        **{theirs: getattr(c, ours) for ours, theirs in _CONFIG_NAMES},
        activation_function=_GPT2_NAME.get(c.activation_function, c.activation_function),
        resid_pdrop=c.drop_rate, embd_pdrop=c.drop_rate, attn_pdrop=c.drop_rate,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    gpt2 = GPT2LMHeadModel(config).to(model.dtype)
    ours = model.state_dict()
    state = {}
    for our_key, key, t in _param_map(c.n_layers, c.tie_word_embeddings):
        if our_key in ours:
            state[key] = ours[our_key].t() if t else ours[our_key]
        elif our_key.endswith("bias"):  # GPT-2 always has biases; zero computes the same function
            state[key] = torch.zeros(gpt2.state_dict()[key].shape, dtype=model.dtype)
    load_exactly(gpt2, state)
    gpt2.generation_config = model.generation_config
    return gpt2.train(model.training)


def load_exactly(model, state: dict) -> None:
    """Copy `state` into `model`, insisting that every parameter is covered (tied copies aside)."""
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"Weight conversion left parameters unset {missing} or unused {unexpected}.")
    model.tie_weights()


@dataclass
class ConvertArguments:
    to: Literal["book"] | None = field(default=None, metadata={
        "help": "'book': write a model of ours as the book's state dict, a .pth file its GPTModel loads."})
    n_heads: int | None = field(default=None, metadata={
        "help": "From a book checkpoint: its attention heads, which the tensors do not show (default: GPT-2's for "
                "its width: 768 -> 12, 1024 -> 16, 1280 -> 20, 1600 -> 25)."})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "From a book checkpoint with LoRA layers (appendix E): the alpha it was trained with, which the "
                "file does not hold (default: the book's, 16)."})
    tokenizer: str = field(default="openai-community/gpt2", metadata={
        "help": "From a book checkpoint: the tokenizer to save with it: a folder of GPT-2's encoder.json and "
                "vocab.bpe (as the book downloads them) or of a saved tokenizer, or a Hub id."})

    def __post_init__(self):
        if self.n_heads is not None and self.n_heads <= 0:
            raise ValueError(f"--n_heads={self.n_heads} is invalid: it must be a positive integer.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha={self.lora_alpha} is invalid: the LoRA scale must be positive.")


def convert_command(args: ConvertArguments, source: str, destination: str) -> None:
    """GPT-2 folder or Hub id -> ScratchGPT folder, or ScratchGPT folder -> GPT-2 folder (by the source's type);
    a book checkpoint (.pth) -> ScratchGPT folder, or with `--to book` a ScratchGPT folder -> book checkpoint."""
    from . import book  # which converts with this module's functions

    from_book = Path(source).suffix in book.BOOK_SUFFIXES and args.to is None
    book_flags = [f"--{name}" for name in ("n_heads", "lora_alpha") if getattr(args, name) is not None]
    if book_flags and not from_book:
        raise ValueError(f"{' '.join(book_flags)} apply to a book checkpoint (a .pth file) only; {source} is not one.")
    if args.to == "book":
        print(book.folder_to_book_checkpoint(source, Path(destination)))
    elif from_book:
        print(book.book_checkpoint_to_folder(source, Path(destination), args.n_heads, args.lora_alpha, args.tokenizer))
    else:
        print(convert_folder(source, Path(destination)))


def convert_folder(source: str, output: Path) -> str:
    """A GPT-2 folder (or Hub id) as a folder of ours, or a folder of ours as GPT-2's, with its tokenizer (where
    it has one) and a card. Returns what was saved, in words."""
    from .loading import has_tokenizer, load_config, load_model, load_tokenizer  # which converts GPT-2 on the way in

    check_new_folder(output)
    from_gpt2 = load_config(source).model_type == "gpt2"
    scratch = load_model(source, ScratchGPTForCausalLM)
    converted = scratch if from_gpt2 else to_gpt2(scratch)
    tokenizer = load_tokenizer(source) if has_tokenizer(source) else None  # else convert the weights alone
    with new_folder(output) as staging:
        converted.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        target_type = converted.config.model_type
        write_card(staging, conversion_card(scratch, output.name, source, target_type))
    return f"Saved {type(converted).__name__} to {output}"


def conversion_card(scratch_model, model_name: str, source: str, target_type: str):
    """The card of a converted checkpoint: where it came from, the architecture, how exact the conversion is and
    how to load it."""
    return Card("convert", scratch_model, model_name, base_model=source, custom_code=target_type == "scratch_gpt",
                details=dict(target_type=target_type))


command = Command(convert_command, (ConvertArguments,), (
    ("source", "GPT-2 or ScratchGPT folder, GPT-2 Hub id, or the book's .pth checkpoint."),
    ("destination", "Output folder (a .pth file with --to book)."),
))
