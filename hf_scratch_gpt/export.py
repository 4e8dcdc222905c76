"""Out of the Hugging Face stack: a causal LM as a GGUF file that llama.cpp runs, with an Ollama `Modelfile`
beside it (chapter 7 judges models with Ollama, which runs GGUF files, not Hub folders).

llama.cpp's GPT-2 is our architecture: learned positions, pre-LayerNorm blocks, one query/key/value projection
in GPT-2's layout, the tanh GELU, an output head tied to the token embedding or not, and no head bias. So the
model goes through `to_gpt2` (exact) and its tensors take the names llama.cpp's own converter gives GPT-2's
(gguf's `TensorNameMap`). What llama.cpp's GPT-2 would compute differently is refused: another activation, a
tokenizer other than byte-level BPE split into words as GPT-2's.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gguf
from transformers.pytorch_utils import Conv1D

from .artifacts import new_folder
from .artifacts.folders import check_new_folder
from .command import Command
from .convert import TANH_GELU, convert_folder, to_gpt2
from .loading import has_tokenizer, load_config, load_model, load_tokenizer
from .modeling_scratch_gpt import ScratchGPTForCausalLM
from .tokenization import gpt2_style_bpe

logger = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
# --dtype: how the matrices are stored. Vectors (biases, norms) and the position embedding stay float32, as
# llama.cpp's converter keeps them.
GGUF_DTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
# The book's evaluation queries Ollama greedily with a fixed seed (chapter 7).
OLLAMA_SEED = 123


def export_gguf(model_dir: str, destination: str, dtype: str = "f32") -> Path:
    """Write the causal LM of `model_dir` (ours, or GPT-2's) as `destination/model.gguf`, with the `Modelfile`
    that `ollama create NAME -f destination/Modelfile` reads; returns the GGUF file's path."""
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r} is unknown: use one of {', '.join(GGUF_DTYPES)}.")
    output = Path(destination)
    check_new_folder(output)
    config = require_language_model(model_dir)
    if config.activation_function not in TANH_GELU:  # the one llama.cpp's GPT-2 computes; a field of ours and GPT-2's
        raise ValueError(f"{model_dir} uses activation_function={config.activation_function!r}, but llama.cpp's GPT-2 "
                         "computes the tanh GELU only; export it with --format gpt2 instead.")
    if not has_tokenizer(model_dir):
        raise ValueError(f"{model_dir} has no tokenizer, and a GGUF file must carry one: save the model's tokenizer "
                         "into the folder (tokenizer.save_pretrained) and export again.")
    tokenizer = load_tokenizer(model_dir, config=config)
    vocabulary = gguf_vocabulary(tokenizer, config.vocab_size, model_dir)
    model = load_model(model_dir, ScratchGPTForCausalLM, tokenizer, config=config)
    with new_folder(output) as staging:
        write_gguf(to_gpt2(model), vocabulary, staging / GGUF_FILE, dtype, name=Path(model_dir).name)
        (staging / MODELFILE).write_text(modelfile(tokenizer, model.config.context_length), encoding="utf-8")
    return output / GGUF_FILE


def require_language_model(model_dir: str):
    """The config of `model_dir`, checked to be a causal LM (a classifier has no head that predicts tokens)."""
    config = load_config(model_dir)
    heads = config.architectures or []
    if heads and not any(head.endswith(("ForCausalLM", "LMHeadModel")) for head in heads):
        raise ValueError(f"{model_dir} holds a {heads[0]}, which has no language-model head to export; export a model "
                         "trained by `pretrain` or `instruct`.")
    return config


def gguf_vocabulary(tokenizer, vocab_size: int, model_dir: str) -> dict:
    """The tokenizer as llama.cpp's GPT-2 reads it: tokens in id order, padded with unused placeholders up to the
    model's vocabulary (llama.cpp sizes the embedding by the token list), their types, the merges, and the ids
    of the special tokens."""
    spec = gpt2_style_bpe(tokenizer)
    if spec is None:
        raise ValueError(f"The tokenizer of {model_dir} is not byte-level BPE split into words as GPT-2's, the only "
                         "kind llama.cpp's GPT-2 tokenizes; export it with --format gpt2 instead.")
    if spec["cuts_long_runs"]:
        logger.warning(f"The tokenizer of {model_dir} cuts runs of 64 non-space characters before GPT-2's word split; "
                       "llama.cpp does not, so text holding such runs (long URLs, for example) may get other tokens.")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer of {model_dir} has no end-of-text token, which llama.cpp and Ollama stop at.")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # llama.cpp's own name for an id no token has
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges, "eos": tokenizer.eos_token_id,
            "bos": tokenizer.bos_token_id, "pad": tokenizer.pad_token_id, "chat_template": tokenizer.chat_template}


def write_gguf(gpt2, vocabulary: dict, path: Path, dtype: str, name: str) -> None:
    """A `GPT2LMHeadModel` and its vocabulary as a GGUF file, with the metadata llama.cpp's converter writes for
    GPT-2. A tied head is left out: llama.cpp then computes the logits with the token embedding."""
    file_type, matrix_type = GGUF_DTYPES[dtype]
    c = gpt2.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(c.n_layer)
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocabulary["tokens"])
    writer.add_token_types(vocabulary["types"])
    writer.add_token_merges(vocabulary["merges"])
    writer.add_eos_token_id(vocabulary["eos"])
    if vocabulary["bos"] is not None:
        writer.add_bos_token_id(vocabulary["bos"])
    if vocabulary["pad"] is not None:
        writer.add_pad_token_id(vocabulary["pad"])
    writer.add_add_bos_token(False)  # GPT-2 starts a text with its first token, no marker
    if vocabulary["chat_template"]:
        writer.add_chat_template(vocabulary["chat_template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, c.n_layer)
    stored_transposed = {f"{module_name}.weight" for module_name, module in gpt2.named_modules()
                         if isinstance(module, Conv1D)}  # GPT-2's (in, out) layers; GGUF wants (out, in)
    for key, tensor in gpt2.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        kind_and_name = names.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
        if kind_and_name is None:
            raise ValueError(f"GPT-2 tensor {key} has no GGUF name; llama.cpp's GPT-2 has no place for it.")
        kind, gguf_name = kind_and_name
        data = (tensor.t() if key in stored_transposed else tensor).float().contiguous().numpy()
        keep_f32 = data.ndim == 1 or kind == gguf.MODEL_TENSOR.POS_EMBD
        stored, qtype = _stored(data, gguf.GGMLQuantizationType.F32 if keep_f32 else matrix_type, key)
        writer.add_tensor(gguf_name, stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _stored(data, qtype, key: str) -> tuple:
    """`(data, raw_dtype=)` for `add_tensor`; a row q8_0's blocks of 32 do not divide is stored in f16 instead,
    as llama.cpp's converter does."""
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        logger.warning(f"{key} has rows of {data.shape[-1]} values, which q8_0 cannot store: kept in f16.")
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def modelfile(tokenizer, context_length: int) -> str:
    """An Ollama `Modelfile` for `model.gguf` beside it: the prompt in the model's own chat template (an
    instruction model's, else the text as it is), stopping at end-of-text, decoded greedily with a fixed seed
    over the whole context, as the book's evaluation queries Ollama."""
    lines = [f"FROM ./{GGUF_FILE}", f'TEMPLATE """{ollama_template(tokenizer)}"""',
             f'PARAMETER stop "{tokenizer.eos_token}"', "PARAMETER temperature 0", f"PARAMETER seed {OLLAMA_SEED}",
             f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


def ollama_template(tokenizer) -> str:
    """The chat template as an Ollama (Go) template: the one-turn prompt the chat template writes, rendered with
    markers where Ollama's prompt and system message go. A system message replaces what the template writes
    without one (the Alpaca preamble)."""
    if tokenizer.chat_template is None:
        return "{{ .Prompt }}"
    prompt, system = "\x00prompt\x00", "\x00system\x00"

    def one_turn(*messages) -> str:
        return tokenizer.apply_chat_template([*messages, {"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)

    with_system, without = one_turn({"role": "system", "content": system}), one_turn()
    shared = len(os.path.commonprefix([with_system[::-1], without[::-1]]))
    text = (f"{{{{ if .System }}}}{with_system[: len(with_system) - shared]}{{{{ else }}}}"
            f"{without[: len(without) - shared]}{{{{ end }}}}{without[len(without) - shared :]}")
    return text.replace(prompt, "{{ .Prompt }}").replace(system, "{{ .System }}")


@dataclass
class ExportArguments:
    format: Literal["gguf", "gpt2"] = field(default="gguf", metadata={
        "help": "gguf: a GGUF file for llama.cpp with an Ollama Modelfile beside it; gpt2: a GPT2LMHeadModel "
                "folder that needs no custom code (what `convert` writes)."})
    dtype: Literal["f32", "f16", "q8_0"] | None = field(default=None, metadata={
        "help": "How the GGUF file stores the weight matrices: f32 (exact, the default), f16 (half the size), "
                "q8_0 (about a quarter)."})

    def __post_init__(self):
        if self.dtype is not None and self.format != "gguf":
            raise ValueError(f"--dtype applies to --format gguf only, not to --format {self.format}.")


def export_command(args: ExportArguments, model_dir: str, destination: str) -> None:
    """A model for llama.cpp and Ollama (GGUF and Modelfile), or as a plain GPT-2 folder."""
    if args.format == "gpt2":
        if require_language_model(model_dir).model_type == "gpt2":
            raise ValueError(f"{model_dir} holds a GPT-2 model already; it needs no export.")
        print(convert_folder(model_dir, Path(destination)))
        return
    path = export_gguf(model_dir, destination, args.dtype or "f32")
    print(f"Saved {path} and {path.parent / MODELFILE}: ollama create NAME -f {path.parent / MODELFILE}")


command = Command(export_command, (ExportArguments,), (("model_dir", "Saved causal LM folder (ours or GPT-2's)."),
                                                       ("destination", "Output folder.")))
