"""The book's own checkpoints <-> ScratchGPT.

The book saves what it trains with `torch.save(model.state_dict(), "model.pth")` and never a config, so the
shape is read from the tensors. Its `GPTModel` has three query/key/value layers where ours has one fused `qkv`,
LayerNorms with `scale` / `shift` where ours have `weight` / `bias`, a feed-forward `nn.Sequential` where ours
has `fc_in` / `fc_out`, and a causal `mask` buffer in every attention layer, which ours builds on the fly.
Nothing else differs: logits agree to fp32 rounding both ways. The book's LoRA (appendix E) becomes a PEFT
adapter with the same outputs.
"""

import os
import re
from pathlib import Path

import torch

from .artifacts import Card, is_peft, new_folder, save_model, write_adapter_card, write_card, write_file
from .artifacts.folders import check_new_file, check_new_folder
from .configuration_scratch_gpt import ScratchGPTConfig
from .convert import TANH_GELU, load_exactly
from .loading import load_config, load_model, load_tokenizer
from .modeling_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification

# The number of heads is the one shape a state dict does not hold: GPT-2's sizes have a known one.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
BOOK_LORA_ALPHA = 16  # appendix E: replace_linear_with_lora(model, rank=16, alpha=16); alpha is not saved
END_OF_TEXT_ID = 50256  # in GPT-2's vocabulary of 50,257, which the book's models use
BOOK_SUFFIXES = (".pth", ".pt")  # what the book's torch.save(model.state_dict(), ...) files are called
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DistributedDataParallel's

# (ours, the book's) inside each block, apart from query/key/value: three book layers, one fused `qkv` here.
_BLOCK_PARAMS = [
    ("norm1.weight", "norm1.scale"),
    ("norm1.bias", "norm1.shift"),
    ("att.out_proj.weight", "att.out_proj.weight"),
    ("att.out_proj.bias", "att.out_proj.bias"),
    ("norm2.weight", "norm2.scale"),
    ("norm2.bias", "norm2.shift"),
    ("ff.fc_in.weight", "ff.layers.0.weight"),
    ("ff.fc_in.bias", "ff.layers.0.bias"),
    ("ff.fc_out.weight", "ff.layers.2.weight"),
    ("ff.fc_out.bias", "ff.layers.2.bias"),
]
_QKV = ("att.W_query", "att.W_key", "att.W_value")
# The book's linear layers (appendix E puts LoRA on all of them) and ours; its `out_head` is our `lm_head` or `score`.
_LINEAR = {"att.out_proj": "att.out_proj", "ff.layers.0": "ff.fc_in", "ff.layers.2": "ff.fc_out"}


def read_book_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """The book's tensors, as `GPTModel.state_dict()` names them: from a `.pth` file (read with
    `weights_only=True`, memory-mapped) or a dict, unwrapped from `{"model_state_dict": ...}` and from
    torch.compile's (`_orig_mod.`) and DDP's (`module.`) prefixes. Anything but a dict of tensors is refused."""
    source = path_or_state_dict
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise ValueError(f"Book checkpoint {str(source)!r} does not exist; give the .pth file that "
                             "torch.save(model.state_dict(), ...) wrote.")
        try:
            source = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise ValueError(f"{source} is not a state dict torch can read safely (weights_only=True): "
                             f"{' '.join(str(error).split())[:300]}; save it with torch.save(model.state_dict(), "
                             "path).") from None
    if isinstance(source, dict) and isinstance(source.get("model_state_dict"), dict):
        source = source["model_state_dict"]  # the book's model-and-optimizer file (chapter 5)
    if not isinstance(source, dict) or not source:
        raise ValueError(f"Expected a state dict (a dict of tensor names to tensors), got a {type(source).__name__}"
                         f"{' that is empty' if isinstance(source, dict) else ''}.")
    state = {}
    for key, value in source.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"The state dict holds {key!r}: {type(value).__name__}, not a tensor; give the "
                             "model's state_dict() alone.")
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    if "tok_emb.weight" not in state:
        raise ValueError(f"The state dict is not the book's GPTModel: it has no tok_emb.weight (its first keys: "
                         f"{list(state)[:4]}).")
    return state


def from_book(path_or_state_dict, config: ScratchGPTConfig | dict | None = None, lora_alpha: float | None = None):
    """The model a book checkpoint holds: a `ScratchGPTForCausalLM`, or a `ScratchGPTForSequenceClassification`
    for chapter 6's classifier (an `out_head` of `num_labels` rows with a bias). With appendix E's LoRA layers,
    a `peft.PeftModel` of that model with the same outputs (`merge_and_unload()` gives a plain one).

    `config`: a `ScratchGPTConfig`, or a dict of its fields such as the book's `GPT_CONFIG_124M`, for what the
    tensors do not show: `n_heads` (default: GPT-2's for its widths), `drop_rate`. What the tensors show must agree.
    `lora_alpha`: the `alpha` LoRA was trained with (default: the book's, 16); the state dict does not hold it.
    """
    state = read_book_state_dict(path_or_state_dict)
    state, lora = _split_lora(state)
    if lora_alpha is not None and not lora:
        raise ValueError(f"lora_alpha={lora_alpha} was given, but the checkpoint has no LoRA layers (X.lora.A).")
    config = _config(state, config, head_has_lora="out_head" in lora)
    classifier = _is_classifier(state)
    model_class = ScratchGPTForSequenceClassification if classifier else ScratchGPTForCausalLM
    model = model_class(config).to(state["tok_emb.weight"].dtype).eval()
    load_exactly(model, _ours(state, config.n_layers, head="score" if classifier else "lm_head"))
    if not lora:
        return model
    return _with_adapter(model, lora, BOOK_LORA_ALPHA if lora_alpha is None else lora_alpha)


def to_book(model) -> dict[str, torch.Tensor]:
    """The state dict of the book's `GPTModel` (chapter 6's classifier for a sequence classifier) with this
    model's weights, which `GPTModel(cfg).load_state_dict(..., strict=True)` takes; `cfg` is the model's config
    as the book names it (`vocab_size`, `context_length`, `emb_dim`, `n_heads`, `n_layers`, `drop_rate`,
    `qkv_bias`)."""
    if is_peft(model):
        raise ValueError("to_book takes a plain model: merge the LoRA adapter first (model.merge_and_unload()).")
    if not isinstance(model, (ScratchGPTForCausalLM, ScratchGPTForSequenceClassification)):
        raise ValueError(f"to_book takes a ScratchGPTForCausalLM or ScratchGPTForSequenceClassification, got "
                         f"{type(model).__name__}.")
    c = model.config
    if c.activation_function not in TANH_GELU or c.layer_norm_epsilon != 1e-5:
        raise ValueError(f"The book's GPTModel has the tanh GELU and LayerNorm epsilon 1e-5; this model has "
                         f"activation_function={c.activation_function!r}, layer_norm_epsilon={c.layer_norm_epsilon}.")
    ours = model.state_dict()
    dtype = ours["model.tok_emb.weight"].dtype
    state = {"tok_emb.weight": ours["model.tok_emb.weight"], "pos_emb.weight": ours["model.pos_emb.weight"],
             "final_norm.scale": ours["model.final_norm.weight"]}
    state["final_norm.shift"] = ours.get("model.final_norm.bias", torch.zeros(c.emb_dim, dtype=dtype))
    mask = torch.triu(torch.ones(c.context_length, c.context_length, dtype=dtype), diagonal=1)
    for i in range(c.n_layers):
        block = f"model.trf_blocks.{i}."
        for name, part in zip(_QKV, ours[block + "att.qkv.weight"].chunk(3)):
            state[f"trf_blocks.{i}.{name}.weight"] = part
        if c.qkv_bias:
            for name, part in zip(_QKV, ours[block + "att.qkv.bias"].chunk(3)):
                state[f"trf_blocks.{i}.{name}.bias"] = part
        for our_name, book_name in _BLOCK_PARAMS:  # without `bias` ours has none: zero computes the same
            rows = ours[block + our_name.replace(".bias", ".weight")].shape[0]
            state[f"trf_blocks.{i}.{book_name}"] = ours.get(block + our_name, torch.zeros(rows, dtype=dtype))
        state[f"trf_blocks.{i}.att.mask"] = mask
    if isinstance(model, ScratchGPTForCausalLM):
        state["out_head.weight"] = ours.get("lm_head.weight", ours["model.tok_emb.weight"])
    else:
        state["out_head.weight"] = ours["score.weight"]
        state["out_head.bias"] = ours.get("score.bias", torch.zeros(c.num_labels, dtype=dtype))
    # Each its own storage: torch.save of a view (a chunk of qkv) writes the whole tensor it views.
    return {key: value.detach().clone() for key, value in state.items()}


def book_config(config: ScratchGPTConfig) -> dict:
    """The book's configuration dict (as `GPT_CONFIG_124M`) of a model: what `GPTModel(cfg)` needs."""
    return {name: getattr(config, name) for name in ("vocab_size", "context_length", "emb_dim", "n_heads",
                                                     "n_layers", "drop_rate", "qkv_bias")}


def _split_lora(state: dict) -> tuple[dict, dict]:
    """Appendix E's `LinearWithLoRA` layers (`X.linear.weight`, `X.lora.A`, `X.lora.B`) as plain linear layers
    (`X.weight`) and their LoRA matrices {X: (A, B)}."""
    plain, lora = {}, {}
    for key, value in state.items():
        match = re.fullmatch(r"(.+)\.lora\.([AB])", key)
        if match:
            lora.setdefault(match[1], {})[match[2]] = value
        else:
            plain[re.sub(r"\.linear\.(weight|bias)$", r".\1", key)] = value
    for layer, pair in lora.items():
        if set(pair) != {"A", "B"} or pair["A"].shape[1] != pair["B"].shape[0]:
            raise ValueError(f"LoRA layer {layer} needs an A of shape (in, rank) and a B of shape (rank, out); got "
                             f"{ {name: tuple(t.shape) for name, t in pair.items()} }.")
    return plain, {layer: (pair["A"], pair["B"]) for layer, pair in lora.items()}


def _is_classifier(state: dict) -> bool:
    """Chapter 6 swaps the vocabulary head for one of `num_labels` rows, with a bias."""
    return "out_head.bias" in state or state["out_head.weight"].shape[0] != state["tok_emb.weight"].shape[0]


# What the tensors show and a given config must agree with; the rest of what they show overrides it.
_SHAPE = ("vocab_size", "context_length", "emb_dim", "n_layers", "qkv_bias")


def _config(state: dict, given, head_has_lora: bool) -> ScratchGPTConfig:
    """The config the tensors show, with what they cannot show (`n_heads`, `drop_rate`, ...) from `given`."""
    if "out_head.weight" not in state or "trf_blocks.0.att.W_query.weight" not in state:
        raise ValueError("The state dict is not the book's GPTModel: it lacks out_head.weight or "
                         "trf_blocks.0.att.W_query.weight.")
    vocab_size, emb_dim = state["tok_emb.weight"].shape
    classifier = _is_classifier(state)
    shown = {
        "vocab_size": vocab_size,
        "context_length": state["pos_emb.weight"].shape[0],
        "emb_dim": emb_dim,
        "n_layers": len({key.split(".")[1] for key in state if key.startswith("trf_blocks.")}),
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in state,
        "bias": True,
        # The book copies tok_emb into out_head and trains them apart: tied only while they are still equal.
        "tie_word_embeddings": not classifier and not head_has_lora
                               and torch.equal(state["out_head.weight"], state["tok_emb.weight"]),
        **({"num_labels": state["out_head.weight"].shape[0], "classifier_bias": "out_head.bias" in state}
           if classifier else {}),
    }
    if isinstance(given, ScratchGPTConfig):
        given = {name: getattr(given, name) for name in ScratchGPTConfig.__annotations__ if name not in shown
                 or name in _SHAPE}
    given = dict(given or {})
    for name in _SHAPE:
        if name in given and given[name] != shown[name]:
            raise ValueError(f"The config says {name}={given[name]!r} but the checkpoint's tensors show "
                             f"{shown[name]!r}.")
    if "n_heads" not in given and emb_dim not in GPT2_HEADS:
        raise ValueError(f"The number of attention heads cannot be read from the tensors, and emb_dim={emb_dim} is "
                         f"none of GPT-2's sizes ({GPT2_HEADS}): give it (config={{'n_heads': ...}}, or --n_heads).")
    end_of_text = END_OF_TEXT_ID if vocab_size == END_OF_TEXT_ID + 1 else None
    return ScratchGPTConfig(**{"n_heads": GPT2_HEADS.get(emb_dim), "initialization": "book",
                               "pad_token_id": end_of_text, "bos_token_id": end_of_text, "eos_token_id": end_of_text,
                               **given, **shown})


def _ours(state: dict, n_layers: int, head: str) -> dict:
    """The book's tensors under our names; every tensor but the causal masks is used, or it is an error."""
    used = set()

    def take(key):
        if key not in state:
            raise ValueError(f"The state dict is not the book's GPTModel: it lacks {key}.")
        used.add(key)
        return state[key]

    ours = {
        "model.tok_emb.weight": take("tok_emb.weight"),
        "model.pos_emb.weight": take("pos_emb.weight"),
        "model.final_norm.weight": take("final_norm.scale"),
        "model.final_norm.bias": take("final_norm.shift"),
        f"{head}.weight": take("out_head.weight"),
    }
    if "out_head.bias" in state:
        ours[f"{head}.bias"] = take("out_head.bias")
    for i in range(n_layers):
        book, block = f"trf_blocks.{i}.", f"model.trf_blocks.{i}."
        ours[block + "att.qkv.weight"] = torch.cat([take(f"{book}{name}.weight") for name in _QKV])
        if f"{book}att.W_query.bias" in state:
            ours[block + "att.qkv.bias"] = torch.cat([take(f"{book}{name}.bias") for name in _QKV])
        for our_name, book_name in _BLOCK_PARAMS:
            ours[block + our_name] = take(book + book_name)
    unused = [key for key in state if key not in used and not re.fullmatch(r"trf_blocks\.\d+\.att\.mask", key)]
    if unused:
        raise ValueError(f"The state dict holds tensors the book's GPTModel does not have: {unused[:5]}.")
    return ours


def _with_adapter(model, lora: dict, alpha: float):
    """`model` with a PEFT LoRA adapter computing what the book's `LinearWithLoRA` layers add: alpha * x A B.
    PEFT scales by lora_alpha / r, so each layer's lora_alpha is alpha * r. Our fused `qkv` takes the book's
    query, key and value LoRA side by side: lora_A stacks their A, lora_B places each B on its own rows (a
    block-diagonal of rank r_q + r_k + r_v), which is exactly the three of them."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if alpha <= 0:
        raise ValueError(f"lora_alpha={alpha} is invalid: the book's LoRA scale alpha must be positive.")
    head = "score" if isinstance(model, ScratchGPTForSequenceClassification) else "lm_head"
    emb_dim = model.config.emb_dim
    parts = {}  # our module -> [(first output row, A, B)]
    for layer, (a, b) in lora.items():
        block = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)", layer)
        if layer == "out_head":
            parts.setdefault(head, []).append((0, a, b))
        elif block and block[2] in _QKV:
            parts.setdefault(f"model.trf_blocks.{block[1]}.att.qkv", []).append((_QKV.index(block[2]) * emb_dim, a, b))
        elif block and block[2] in _LINEAR:
            parts.setdefault(f"model.trf_blocks.{block[1]}.{_LINEAR[block[2]]}", []).append((0, a, b))
        else:
            raise ValueError(f"LoRA layer {layer} is not one of the book's linear layers.")
    modules = dict(model.named_modules())
    adapter = {}
    for name, pieces in parts.items():
        lora_a = torch.cat([a.t() for _, a, _ in pieces])  # (rank, in)
        lora_b = torch.zeros(modules[name].out_features, len(lora_a), dtype=lora_a.dtype)
        column = 0
        for row, a, b in pieces:
            lora_b[row : row + b.shape[1], column : column + len(b)] = b.t()
            column += len(b)
        adapter[name] = (lora_a, lora_b)
    ranks = {name: len(lora_a) for name, (lora_a, _) in adapter.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    other = {}  # PEFT's patterns: a layer's name (`qkv`) where all its blocks agree, else the whole module name
    for name, rank in ranks.items():
        kind = name.rsplit(".", 1)[-1]
        if rank != r:
            same = {other_rank for other_name, other_rank in ranks.items() if other_name.rsplit(".", 1)[-1] == kind}
            other[kind if same == {rank} else re.escape(name)] = rank
    config = LoraConfig(
        r=r, lora_alpha=alpha * r, target_modules=sorted(adapter), rank_pattern=other,
        alpha_pattern={name: alpha * rank for name, rank in other.items()},
        task_type="CAUSAL_LM" if head == "lm_head" else None,  # SEQ_CLS would retrain `score` whole
    )
    peft_model = get_peft_model(model, config)
    weights = get_peft_model_state_dict(peft_model, save_embedding_layers=False)  # the LoRA matrices only
    for key in weights:
        name, matrix = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key).groups()
        weights[key] = adapter[name][matrix == "B"]
    set_peft_model_state_dict(peft_model, weights)
    return peft_model.eval()


def book_checkpoint_to_folder(source, output: Path, n_heads: int | None = None, lora_alpha: float | None = None,
                              tokenizer_source: str = "openai-community/gpt2") -> str:
    """A folder of ours (model, tokenizer, card) from the book's checkpoint; with LoRA layers, the model they make
    (merged) in the folder, the PEFT adapter in `adapter/` and the weights it goes on in `base/`. Returns what
    was saved, in words."""
    check_new_folder(output)
    model = from_book(source, {"n_heads": n_heads} if n_heads else None, lora_alpha)
    tokenizer = load_tokenizer(tokenizer_source)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"--tokenizer {tokenizer_source} has {len(tokenizer)} tokens but the checkpoint's vocabulary "
                         f"holds {model.config.vocab_size}; give the tokenizer the model was trained with.")
    lora = is_peft(model)
    with new_folder(output) as staging:
        saved = save_model(model, tokenizer, staging, with_base=True)
        classifier = isinstance(saved, ScratchGPTForSequenceClassification)
        pipeline = "text-classification" if classifier else "text-generation"
        card = write_card(staging, Card("book", saved, output.name, pipeline_tag=pipeline, base_model=str(source),
                                        details=dict(pipeline=pipeline, book_config=book_config(saved.config),
                                                     lora_alpha=(lora_alpha or BOOK_LORA_ALPHA) if lora else None,
                                                     auto_class="AutoModelForSequenceClassification" if classifier
                                                     else "AutoModelForCausalLM")))
        if lora:
            write_adapter_card(staging / "adapter", card)
    return f"Saved {type(saved).__name__} to {output}" + (" (LoRA: merged; adapter/ and base/ beside)" if lora else "")


def folder_to_book_checkpoint(source: str, destination: Path) -> str:
    """The book's state dict of a saved model of ours, written whole or not at all. Returns what was saved and
    how the book's code loads it, in words."""
    if destination.suffix not in BOOK_SUFFIXES:
        raise ValueError(f"--to book writes a .pth file; {destination} is not named like one.")
    check_new_file(destination)
    config = load_config(source)
    classifier = "ScratchGPTForSequenceClassification" in (config.architectures or [])
    model = load_model(source, ScratchGPTForSequenceClassification if classifier else ScratchGPTForCausalLM,
                       config=config)
    state = to_book(model)
    write_file(destination, lambda path: torch.save(state, path))
    c = model.config
    head = f", its out_head set to torch.nn.Linear({c.emb_dim}, {c.num_labels}) (chapter 6)" if classifier else ""
    return f"Saved the book's state dict to {destination}; load it into GPTModel({book_config(c)}){head}"
