"""Configuration of the book's GPT, with the book's field names.

This file travels with every checkpoint as remote code: it imports only transformers.
"""

import contextvars
import difflib
import inspect
import re

import transformers

# This file runs with whatever transformers loads a checkpoint (remote code): say so before an import fails.
MINIMUM_TRANSFORMERS = "5.16.1"
_INSTALLED = [int(n) for n in re.findall(r"\d+", transformers.__version__)[:3]]
if _INSTALLED < [int(n) for n in MINIMUM_TRANSFORMERS.split(".")]:
    raise ImportError(
        f"This ScratchGPT model needs transformers >= {MINIMUM_TRANSFORMERS}, and this Python has "
        f"{transformers.__version__}: pip install --upgrade 'transformers>={MINIMUM_TRANSFORMERS}'"
    )

from huggingface_hub.dataclasses import strict  # noqa: E402 (after the version check)
from transformers import PreTrainedConfig  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402
from transformers.utils import logging  # noqa: E402

logger = logging.get_logger(__name__)

INITIALIZATIONS = ("gpt2", "book")  # GPT-2's scheme, or PyTorch's module defaults as the book's GPTModel has them
_SAVED_KEYS = contextvars.ContextVar("scratch_gpt_saved_keys", default=frozenset())  # set while from_dict loads


@strict
class ScratchGPTConfig(PreTrainedConfig):
    r"""
    The shape of the GPT of "Build a Large Language Model (From Scratch)". Defaults are GPT-2 124M.

    Args:
        vocab_size (`int`): number of token ids the embedding and output head know.
        context_length (`int`): longest sequence the position embedding covers (`max_position_embeddings`).
        emb_dim (`int`): width of every hidden state (`hidden_size`).
        n_heads (`int`): attention heads per block; must divide `emb_dim` (`num_attention_heads`).
        n_layers (`int`): number of transformer blocks (`num_hidden_layers`).
        activation_function (`str`): the feed-forward non-linearity, by its transformers name. The
            default is the book's and GPT-2's GELU (tanh approximation) in PyTorch's fused kernel;
            `"gelu"` is the exact GELU (nanoGPT's choice, faster on CPUs).
        drop_rate (`float`): dropout on embeddings, attention weights and both residual branches.
        qkv_bias (`bool`): whether the query/key/value projection has a bias (GPT-2 has one, the book's
            from-scratch model does not).
        bias (`bool`): whether the other linear layers and the LayerNorms have biases (GPT-2 and the
            book: yes; nanoGPT's default: no, a little better and faster).
        layer_norm_epsilon (`float`): epsilon of every LayerNorm.
        initializer_range (`float`): standard deviation of the normal initialisation (GPT-2's scheme).
        initialization (`str`): how a new model's weights start: `"gpt2"`, GPT-2's normal(0,
            initializer_range) with the residual projections scaled down, for real pretraining; or `"book"`,
            PyTorch's module defaults as the book's `GPTModel` keeps them (embeddings normal(0, 1), linear
            layers uniform in +-1/sqrt(fan_in)), to reproduce the book's chapter-5 figures.
        tie_word_embeddings (`bool`): share the token embedding with the output head.
        classifier_bias (`bool`): whether the classification head (`score`) has a bias, as the book's
            chapter-6 classifier head does.
        pad_token_id / bos_token_id / eos_token_id: special token ids, or `None`.
        use_cache (`bool`): whether inference returns a key/value cache for fast decoding.
    """

    model_type = "scratch_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # from transformers 5.24, and before
    attribute_map = {
        "hidden_size": "emb_dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "context_length",
    }

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    activation_function: str = "gelu_pytorch_tanh"
    drop_rate: float | int = 0.1
    qkv_bias: bool = False
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    initialization: str = "gpt2"
    tie_word_embeddings: bool = True
    classifier_bias: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """Load a saved config, telling the misspelling check which keys the saved dict holds."""
        saved = _SAVED_KEYS.set(frozenset(config_dict))
        try:
            return super().from_dict(config_dict, **kwargs)
        finally:
            _SAVED_KEYS.reset(saved)

    def __post_init__(self, **kwargs):
        _refuse_misspelt_fields(kwargs)
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            _check(name, getattr(self, name), getattr(self, name) > 0, "must be a positive integer")
        _check(
            "emb_dim", self.emb_dim, self.emb_dim % self.n_heads == 0,
            f"must be divisible by n_heads={self.n_heads} (each head gets emb_dim // n_heads dimensions)",
        )
        _check(
            "activation_function", self.activation_function, self.activation_function in ACT2FN,
            f"must name one of transformers' activations: {', '.join(sorted(ACT2FN))}",
        )
        _check("drop_rate", self.drop_rate, 0 <= self.drop_rate < 1, "must be in [0, 1)")
        _check("layer_norm_epsilon", self.layer_norm_epsilon, self.layer_norm_epsilon > 0, "must be > 0")
        _check("initializer_range", self.initializer_range, self.initializer_range > 0, "must be > 0")
        _check("initialization", self.initialization, self.initialization in INITIALIZATIONS,
                 f"must be one of {', '.join(INITIALIZATIONS)}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [] if value is None else [value]
            _check(
                name, value, all(0 <= i < self.vocab_size for i in ids),
                f"must be None or token ids in [0, vocab_size={self.vocab_size})",
            )


def _refuse_misspelt_fields(kwargs: dict) -> None:
    """Unknown fields are kept as attributes (configs carry extra keys), but one a letter or two away from a field
    of ours (GPT-2's `n_layer` for `n_layers`) in place of that field would silently leave it at its default:
    refused. Beside the field, in a saved config, it only warns: save_pretrained writes all our fields and every
    attribute set on the config (`config.layer_norm_eps = 1.0`, as transformers' own tests do), and what it
    writes must load."""
    ours = [name for name in inspect.get_annotations(ScratchGPTConfig) if not name.startswith("_")]
    for key in kwargs:
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.85)
        if not close:
            continue
        message = f"ScratchGPTConfig got {key}={kwargs[key]!r}, a field it does not have; did you mean {close[0]}?"
        if close[0] not in _SAVED_KEYS.get():
            raise ValueError(message)
        logger.warning(f"{message} Kept as an extra attribute, which the model does not read; the saved "
                       f"{close[0]} is used.")


def _check(field: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"ScratchGPTConfig.{field}={value!r} is invalid: {field} {rule}.")


__all__ = ["ScratchGPTConfig"]
