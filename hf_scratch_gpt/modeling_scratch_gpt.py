"""The GPT of "Build a Large Language Model (From Scratch)", written out as a transformers model.

Read top to bottom in the book's order: attention, feed-forward, transformer block, the model
(token + position embeddings, blocks, final norm), then the heads. Shapes in comments use
b = batch, n = new tokens, k = tokens attended to (cached + new), h = heads, d = head size.

This file travels with every checkpoint as remote code: it imports only torch, transformers and
its configuration file.
"""

import inspect
import math
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.generation import GenerationMixin
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_scratch_gpt import ScratchGPTConfig
from .kernels_scratch_gpt import Dropout, Linear, PackedRow, dropout16, head_cross_entropy, training_attention

# --- The cache's name across transformers releases: delete this section when the floor reaches 5.24 ----------
# transformers 5.24 renamed the key/value cache from `past_key_values` to `cache` (generate()'s model inputs, the
# mask builders, the output dataclasses) and announced the old name's removal. Read once, here, which name this
# release uses; forward accepts both (the old one with transformers' own FutureWarning from 5.24 on), and hands the
# cache back and on under this one.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def _one_cache(cache, past_key_values):
    """The cache, under whichever of its two names the caller passed it."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the cache once: as `cache` (transformers >= 5.24) or as `past_key_values`, not both.")
    if CACHE_NAME == "cache":
        warnings.warn("`past_key_values` is deprecated and will be removed in transformers 5.40; pass the same "
                      "object as `cache`.", FutureWarning, stacklevel=3)
    return past_key_values
# -----------------------------------------------------------------------------------------------------------------

# --- Continuous batching's paged cache before transformers 5.19: delete this section when the floor reaches 5.19 --
# Until 5.18, transformers' paged attention functions (`paged|eager`, `paged|sdpa`) update the paged cache, which
# they find in their kwargs; from 5.19 the model updates it (`cache.update(..., kwargs=kwargs)`, filling the kwargs
# the attention function reads), and `paged|eager` is plain eager attention, ours.
PAGED_CACHE_UPDATED_BY_MODEL = "kwargs" in inspect.signature(PagedAttentionCache.update).parameters
# -----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Scaled dot-product attention written out, as in chapter 3; returns (context, attention weights).

    `attention_mask` is whatever transformers' mask builder made: an additive float mask (eager), a
    boolean keep-mask (sdpa), or None for a plain causal mask, which we then build as the book does.
    """
    # Scaling the queries is scaling the scores, on a smaller tensor (exact for a power-of-two head size); a
    # boolean mask is applied in place (backward does not need the unmasked scores). An additive mask is added
    # out of place: its dtype's minimum (fp32's, under autocast) would overflow bf16 scores to -inf, and a row
    # with no key to attend to (left padding) to NaN.
    attn_scores = (query * scaling) @ key.transpose(2, 3)  # (b, h, n, k)
    if attention_mask is None:  # the book's triangular mask; the offset lets cached queries see the past
        n, k = attn_scores.shape[-2:]
        keep = torch.ones(n, k, dtype=torch.bool, device=attn_scores.device).tril(diagonal=k - n)
        attention_mask = keep
    if attention_mask.dtype == torch.bool:
        attn_scores.masked_fill_(~attention_mask, torch.finfo(attn_scores.dtype).min)
    else:
        attn_scores = attn_scores + attention_mask
    # Softmax kernels compute in fp32 whatever the input; a bf16 output (under autocast) is the same rounded
    # result as fp32's cast afterwards, and is what backward keeps: half the memory of an fp32 one.
    attn_weights = torch.softmax(attn_scores, dim=-1).to(query.dtype)
    attn_weights = dropout16(attn_weights, p=dropout, training=module.training)
    context = (attn_weights @ value).transpose(1, 2)  # (b, n, h, d)
    return context, attn_weights


# What CPU training chooses between by timing (`training_attention`), the default first.
TRAINING_ATTENTION = {"sdpa": ALL_ATTENTION_FUNCTIONS["sdpa"], "eager": eager_attention_forward}


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention. Query, key and value come from one fused projection (one
    matmul instead of three); the attention itself is ours (eager) or any transformers backend."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_heads
        self.head_dim = config.emb_dim // config.n_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.drop_rate
        self.is_causal = True  # read by the sdpa / flash backends
        self.qkv = Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)  # W_query|W_key|W_value
        self.out_proj = Linear(config.emb_dim, config.emb_dim, bias=config.bias)
        self.out_proj.writes_residual = True  # smaller initialisation, see _init_weights

    def forward(self, hidden_states, attention_mask=None, cache=None, output_attentions=False, packed_row=None,
                **kwargs):
        b, n, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(b, n, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, h, n, d)
        if isinstance(cache, Cache) or (cache is not None and PAGED_CACHE_UPDATED_BY_MODEL):
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)  # (b, h, k, d); paged: fills kwargs
        elif cache is not None:  # a paged cache that the paged attention function updates
            kwargs["cache"] = cache

        if packed_row is not None:  # one packed row, attended as a batch of its sequences (see PackedRow)
            query, key, value = (packed_row.unpack(states) for states in (query, key, value))

        # Only the eager path materialises attention weights, so a request for them takes it. So does
        # training with attention dropout on the CPU: there sdpa has no fused kernel with dropout and runs
        # its unfused path in fp32 even under bf16 autocast, which is ours at twice the memory. Without
        # dropout, CPU training takes whichever of sdpa and eager computes forward and backward faster at its
        # shapes here (sdpa's bf16 backward is 4x eager's at short contexts on some CPUs). Eager is ours, also
        # under continuous batching from 5.19 (`paged|eager`: its mask is additive, its cache updated).
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and self.training and query.is_cpu:
            if self.dropout:
                implementation = "eager"
            elif query.requires_grad and not torch.compiler.is_compiling():
                implementation = training_attention(self, query, key, value, TRAINING_ATTENTION)
        if output_attentions or (implementation == "paged|eager" and PAGED_CACHE_UPDATED_BY_MODEL):
            implementation = "eager"
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        dropout = self.dropout if self.training else 0.0
        # One call site: vLLM finds the attention of a module by reading its source for exactly one such call.
        context, attn_weights = attention(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=dropout, **kwargs
        )
        if packed_row is not None:
            context, attn_weights = packed_row.pack(context), None
        return self.out_proj(context.reshape(b, n, -1)), attn_weights


class FeedForward(nn.Module):
    """Expand to 4x width, GELU (the config's `activation_function`), project back."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.fc_in = Linear(config.emb_dim, 4 * config.emb_dim, bias=config.bias)
        self.act = ACT2FN[config.activation_function]
        self.fc_out = Linear(4 * config.emb_dim, config.emb_dim, bias=config.bias)
        self.fc_out.writes_residual = True  # smaller initialisation, see _init_weights

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed_forward(norm(x)), with dropout on
    each residual branch ("shortcut" in the book)."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_epsilon, bias=config.bias)
        self.att = MultiHeadAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_epsilon, bias=config.bias)
        self.ff = FeedForward(config)
        self.drop_shortcut = Dropout(config.drop_rate)

    def forward(self, x, attention_mask=None, cache=None, output_attentions=False, **kwargs):
        attn_output, attn_weights = self.att(self.norm1(x), attention_mask, cache, output_attentions, **kwargs)
        x = x + self.drop_shortcut(attn_output)
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x, attn_weights


class ScratchGPTPreTrainedModel(PreTrainedModel):
    config_class = ScratchGPTConfig
    config: ScratchGPTConfig
    base_model_prefix = "model"
    _input_embed_layer = "tok_emb"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _can_compile_fullgraph = True  # no graph breaks in training or decoding (tests/model/test_compile.py)
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": TransformerBlock, "attentions": MultiHeadAttention}  # output [0], [1]

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2's scheme (`initialization="gpt2"`): normal(0, initializer_range) everywhere (the parent does
        it), and the two projections that write into the residual stream scaled by 1/sqrt(2 * n_layers).
        The book's (`"book"`): PyTorch's module defaults, which the book's `GPTModel` never changes."""
        if self.config.initialization == "book" and isinstance(module, (nn.Linear, nn.Embedding)):
            _pytorch_default_init(module)
            return
        super()._init_weights(module)
        if self.config.initialization == "gpt2" and getattr(module, "writes_residual", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layers)
            init.normal_(module.weight, mean=0.0, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Name every Auto class in `auto_map`, not only this one, so that any of them loads the
        folder as remote code where this package is not installed."""
        self.config.auto_map = {
            "AutoConfig": "configuration_scratch_gpt.ScratchGPTConfig",
            "AutoModel": "modeling_scratch_gpt.ScratchGPTModel",
            "AutoModelForCausalLM": "modeling_scratch_gpt.ScratchGPTForCausalLM",
            "AutoModelForSequenceClassification": "modeling_scratch_gpt.ScratchGPTForSequenceClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


def _pytorch_default_init(module):
    """`reset_parameters` of nn.Embedding (normal(0, 1)) and nn.Linear (Kaiming-uniform weights, biases uniform in
    +-1/sqrt(fan_in)), through transformers' init functions, which leave weights loaded from a checkpoint alone."""
    if isinstance(module, nn.Embedding):
        init.normal_(module.weight)
        return
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1 / math.sqrt(module.in_features)
        init.uniform_(module.bias, -bound, bound)


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """Token + learned position embeddings, `n_layers` transformer blocks, final LayerNorm."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_epsilon, bias=config.bias)
        self.post_init()

    @capture_outputs  # hidden states and attentions, recorded from the blocks (see _can_record_outputs)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        cache (`Cache`, *optional*): keys and values of the tokens seen so far (`past_key_values` before
            transformers 5.24; either name is read).
        """
        cache = _one_cache(cache, past_key_values)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        # Packed rows: several sequences in one row, positions restarting at 0 at each. No cache can continue them.
        packed = cache is None and attention_mask is None and _restarts(position_ids)
        if use_cache is None:  # a cache is for inference; in training it would only copy every key and value again
            use_cache = self.config.use_cache and not self.training and not packed
        elif use_cache and packed:
            raise ValueError("use_cache=True with packed rows (position_ids restarting within a row): one cache "
                             "cannot hold several sequences; pass use_cache=False, or one sequence per row.")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        # Continuous batching's paged cache is no `Cache`: it sends each token's position in `position_ids`.
        past_length = cache.get_seq_length() if isinstance(cache, Cache) else 0  # a tensor in a static cache
        if not torch.compiler.is_compiling():  # a compiled graph has no Python branches on values
            self._check_inputs(input_ids, inputs_embeds, attention_mask, position_ids, past_length)

        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)  # (b, n, emb_dim)
        given_position_ids = position_ids
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device)
        # Eager and sdpa attention take one packed row as a batch of its sequences; flash and flex attention, or a
        # batch of packed rows, take a block-diagonal mask, which the mask builder makes from the given positions.
        packed_row = None
        if packed and inputs_embeds.shape[0] == 1 and not output_attentions and self.config._attn_implementation in (
            "eager", "sdpa"
        ):
            packed_row = PackedRow(_sequence_lengths(position_ids[0]), inputs_embeds.device)
        mask = None if packed_row else create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=given_position_ids,
            **{_MASK_CACHE_NAME: cache},
        )
        x = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))

        for block in self.trf_blocks:
            x, _ = block(x, mask, cache, output_attentions, position_ids=position_ids, packed_row=packed_row, **kwargs)
        x = self.final_norm(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_NAME: cache if use_cache else None})

    @staticmethod
    def _position_ids(attention_mask, past_length, n, device):
        """Positions count real tokens only, so a left-padded prompt starts at position 0."""
        if attention_mask is None or attention_mask.dim() != 2:
            return torch.arange(n, device=device).unsqueeze(0) + past_length
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -n:]

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, past_length):
        """Fail early, in our words, on what would otherwise be an index error deep inside torch."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        tokens = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(
                f"Expected a (batch, sequence) batch of at least one token, got shape {tuple(tokens.shape)}."
            )
        batch, n = tokens.shape
        # Given positions guard the position embedding themselves (packed rows hold several sequences, each of
        # which must fit the context, not the row); otherwise the row is one sequence, after what is cached.
        if (position_ids is None or past_length) and past_length + n > self.config.context_length:
            raise ValueError(
                f"Sequence of {past_length + n} tokens ({past_length} cached + {n} new) is longer than "
                f"context_length={self.config.context_length}; truncate the input to the last "
                f"{self.config.context_length} tokens."
            )
        if input_ids is not None:
            _check_range(input_ids, self.config.vocab_size, "input_ids holds token id {}, outside the vocabulary "
                         f"[0, {self.config.vocab_size}); was the text encoded with the tokenizer this model was "
                         "trained with?")
        if position_ids is not None:
            _check_range(position_ids, self.config.context_length, "position_ids holds position {}, outside "
                         f"[0, context_length={self.config.context_length}): each sequence must fit the context; "
                         "truncate it, or split it into windows.")
        if attention_mask is not None and attention_mask.dim() != 4:
            if tuple(attention_mask.shape) != (batch, past_length + n):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, cached + new "
                    f"tokens) = ({batch}, {past_length + n})."
                )


def _restarts(position_ids) -> bool:
    """Whether some row's positions restart: packed sequences (DataCollatorWithFlattening, TRL's padding_free)."""
    if position_ids is None or position_ids.shape[-1] < 2 or position_ids.is_meta or torch.compiler.is_compiling():
        return False
    return bool((position_ids[..., 1:] <= position_ids[..., :-1]).any())


def _sequence_lengths(positions: torch.Tensor) -> list[int]:
    """The lengths of the sequences packed into one row, from its positions."""
    starts = [0, *((positions[1:] <= positions[:-1]).nonzero().flatten() + 1).tolist(), positions.shape[0]]
    return [end - start for start, end in zip(starts, starts[1:])]


def _check_range(values: torch.Tensor, limit: int, message: str) -> None:
    """Refuse values outside [0, limit), which would otherwise fail as an index error deep inside torch. On the
    CPU the check costs nothing. On an accelerator, reading the answer back would stall every decoded token:
    on CUDA the check is queued as a device-side assertion with the same message (the value left out); other
    devices are left to their own index checks."""
    if torch.compiler.is_compiling():
        return
    if values.is_cpu:
        low, high = values.aminmax()
        if low < 0 or high >= limit:
            raise ValueError(message.format(int(low if low < 0 else high)))
    elif values.device.type == "cuda":
        torch._assert_async(((values >= 0) & (values < limit)).all(), message.format("out of range"))


# The output head is the book's `out_head` in every saved file and transformers' `lm_head` in the model, the name
# engines look for (vLLM's Transformers backend builds the base model and its own `lm_head`). transformers renames it
# on loading and back on saving, and so does vLLM, through this mapping; `_book_head_name` does it for plain
# `load_state_dict` (Trainer resuming from a checkpoint or reloading its best one).
register_checkpoint_conversion_mapping(
    "ScratchGPTForCausalLM", [WeightRenaming(source_patterns=r"^out_head\.", target_patterns="lm_head.")],
    overwrite=True,  # this file may be imported twice: from the package and as a checkpoint's remote code
)


def _book_head_name(module, state_dict, prefix, *args):
    for key in [key for key in state_dict if key.startswith(prefix + "out_head.")]:
        state_dict[prefix + "lm_head." + key.removeprefix(prefix + "out_head.")] = state_dict.pop(key)


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """The model with its output head (the book's `out_head`, here `lm_head`), tied to the token embedding by
    default."""

    _tied_weights_keys = {"lm_head.weight": "model.tok_emb.weight"}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.model = ScratchGPTModel(config)
        self.lm_head = Linear(config.emb_dim, config.vocab_size, bias=False)
        self.post_init()
        # A tied head is the embedding, never saved on its own: saying so lets Trainer, reloading its best or a
        # resumed checkpoint, tie it again instead of warning that it is missing.
        self._keys_to_ignore_on_save |= set(self.all_tied_weights_keys)
        self.register_load_state_dict_pre_hook(_book_head_name)

    @can_return_tuple
    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
        use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0, past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch, sequence)`, *optional*): next-token targets equal to
            `input_ids` (the loss shifts them); -100 marks positions to ignore.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last N positions (0: all), or for
            the positions a 1-d tensor lists.
        """
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=_one_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        hidden = outputs.last_hidden_state
        if labels is not None and self.training and torch.is_grad_enabled() and type(self.lm_head) is Linear:
            # Training: the loss straight from the hidden states (see _HeadCrossEntropy); no logits returned.
            # kwargs carry Trainer's num_items_in_batch, for exact gradient accumulation.
            loss = head_cross_entropy(hidden, self.lm_head.weight, labels, kwargs.get("num_items_in_batch"))
            logits = None
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden[:, keep, :])
            loss = None
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **{CACHE_NAME: getattr(outputs, CACHE_NAME)})


class ScratchGPTForSequenceClassification(ScratchGPTPreTrainedModel):
    """Classifies from the hidden state of the last real (non-padding) token, as in chapter 6."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ScratchGPTModel(config)
        self.score = nn.Linear(config.emb_dim, config.num_labels, bias=config.classifier_bias)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
        use_cache: bool | None = None, past_key_values: Cache | None = None, **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.Tensor` of shape `(batch,)` or `(batch, num_labels)`, *optional*): class ids
            (single-label), multi-hot floats (multi-label) or targets (regression, `num_labels == 1`).
        """
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=_one_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        hidden_states = outputs.last_hidden_state  # (b, n, emb_dim)
        last = self._last_token_index(input_ids, attention_mask, hidden_states.shape[0], hidden_states.shape[1])
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled_logits = self.score(hidden_states[rows, last])  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled_logits, hidden_states=outputs.hidden_states,
                                                attentions=outputs.attentions,
                                                **{CACHE_NAME: getattr(outputs, CACHE_NAME)})

    def _last_token_index(self, input_ids, attention_mask, batch, n):
        """Rightmost position that is a real token, whichever side the padding is on."""
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask[:, -n:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        elif batch == 1:
            return n - 1
        else:
            raise ValueError(
                "Cannot find the last real token of each row in a batch of more than one: pass "
                "`attention_mask`, or set `config.pad_token_id`."
            )
        positions = torch.arange(n, device=real.device)
        return (positions * real).argmax(-1)


__all__ = [
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
]
