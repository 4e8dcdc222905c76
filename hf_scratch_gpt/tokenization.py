"""Tokenizers (chapter 2), built with the `tokenizers` library and wrapped as `PreTrainedTokenizerFast`,
so they save with `save_pretrained` and load with `AutoTokenizer`; and the instruction prompt (chapter 7)
as a chat template."""

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
# GPT-2's BPE, identified by the sha256 of its tokens in id order and its merges (`_bpe_fingerprint`), and the
# pre-tokenizer regex of byte-level BPE: what `batch_encoder` needs to hand GPT-2's vocabulary to tiktoken.
GPT2_BPE_SHA256 = "0f8c9d6ae8900a28603a84f9c4be747822b43891146b9d76e7d3faf936c34c0b"
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
UNKNOWN = "<|unk|>"
LONG_RUN = r"\S{64}"  # what the BPE of `train_tokenizer` cuts text at before GPT-2's regex finds words
# The pre-tokenizer of `train_tokenizer(kind="char")`: every character a word of its own.
EVERY_CHARACTER = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# The book's Alpaca prompt as a chat template, so that `apply_chat_template` writes exactly the text a model
# was fine-tuned on. Roles: an optional `system` message replaces the preamble; `user` holds the instruction;
# an optional `input` message holds the instruction's input; `assistant` holds the response, which ends with
# the end-of-text token (the model learns to stop there). The response is marked `{% generation %}`, so
# `return_assistant_tokens_mask` (and TRL's `assistant_only_loss`) pick out what the book's loss scores.
ALPACA_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] -}}{%- set messages = messages[1:] -%}"
    "{%- else -%}{{- '" + ALPACA_PREAMBLE + "' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '\n\n### Instruction:\n' + message['content'] -}}"
    "{%- elif message['role'] == 'input' -%}"
    "{%- if message['content'] -%}{{- '\n\n### Input:\n' + message['content'] -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- '\n\n### Response:\n' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- raise_exception('The Alpaca template knows the roles system, user, input and assistant, "
    "not ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\n\n### Response:\n' -}}{%- endif -%}"
)


def train_tokenizer(
    texts_or_files: Iterable[str | os.PathLike], kind: str = "bpe", vocab_size: int = 8192
) -> PreTrainedTokenizerFast:
    """Learn a vocabulary from text.

    `kind="bpe"`: byte-level BPE as GPT-2 (any text encodes, nothing is unknown); `vocab_size` counts
    the 256 bytes and `<|endoftext|>`. `kind="char"`: one token per character seen in training (at
    most `vocab_size`), others become `<|unk|>`. `pathlib.Path` items are read as UTF-8 files; strings
    are texts. `<|endoftext|>` ends documents and pads.
    """
    if kind not in ("bpe", "char"):
        raise ValueError(f"Tokenizer kind {kind!r} is unknown: use 'bpe' (byte-level BPE) or 'char'.")
    minimum = 257 if kind == "bpe" else 3
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer: use at least {minimum}.")
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        # Runs of more than 64 non-space characters are cut into pieces first: BPE training time grows with
        # the square of a word's length, and one long line without spaces would otherwise take hours.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LONG_RUN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(EVERY_CHARACTER["pattern"]["Regex"]), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=[END_OF_TEXT, UNKNOWN], show_progress=False
        )
    texts = list(_texts(texts_or_files))
    if not any(text.strip() for text in texts):
        raise ValueError("Cannot train a tokenizer on an empty corpus: every text given is empty.")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer, unk_token=UNKNOWN if kind == "char" else None)


def gpt2_tokenizer(vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer from OpenAI's released `encoder.json` and `vocab.bpe` (or `vocab.json` and
    `merges.txt`, the same files under transformers' names)."""
    for path in (vocab_file, merges_file):
        if not Path(path).is_file():
            raise ValueError(f"GPT-2 tokenizer file {str(path)!r} does not exist.")
    try:
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{vocab_file} is not a JSON vocabulary (encoder.json / vocab.json): {error}") from error
    if not isinstance(vocab, dict) or END_OF_TEXT not in vocab:
        raise ValueError(f"{vocab_file} is not GPT-2's vocabulary: expected a token -> id map with {END_OF_TEXT}.")
    try:
        bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as error:
        raise ValueError(f"{merges_file} is not a BPE merges file (vocab.bpe / merges.txt): {error}") from error
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([END_OF_TEXT])
    wrapped = _wrap(tokenizer, unk_token=None)
    if len(wrapped) != len(vocab):
        raise ValueError(f"Built a tokenizer of {len(wrapped)} tokens from a vocabulary of {len(vocab)}.")
    if len(vocab) == 50257 and wrapped("Hello, world").input_ids != [15496, 11, 995]:
        raise ValueError(f"{vocab_file} / {merges_file} do not encode 'Hello, world' as GPT-2 does.")
    return wrapped


def _wrap(tokenizer: Tokenizer, unk_token: str | None) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=unk_token,
    )


def _texts(texts_or_files: Iterable[str | os.PathLike]) -> Iterable[str]:
    if isinstance(texts_or_files, (str, os.PathLike)):
        texts_or_files = [texts_or_files]
    for number, item in enumerate(texts_or_files, 1):
        if isinstance(item, os.PathLike):
            yield read_text_file(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"Text {number} is not valid Unicode: it holds a lone surrogate "
                                 f"U+{ord(item[error.start]):04X} at position {error.start}.") from None
            yield item
        else:
            raise ValueError(f"Expected texts or file paths, got a {type(item).__name__}.")


def check_utf8(path: str, block: int = 2**20) -> None:
    """Our clear error for a text file that is not UTF-8 (naming the file and byte), read a block at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as file:
        while True:
            data = file.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                bad = offset + error.start - len(decoder.getstate()[0])
                raise ValueError(f"{path} is not UTF-8 text: byte {bad} is 0x{error.object[error.start]:02x}; "
                                 "convert it to UTF-8.") from None
            if not data:
                return
            offset += len(data)


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 file's text, or `check_utf8`'s error naming the file and the first offending byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"Cannot read {path}: {error.strerror}.") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        check_utf8(path)
        raise


def batch_encoder(tokenizer) -> Callable[[list[str]], list[np.ndarray]]:
    """A function from texts to their token ids, exactly those of `tokenizer(texts, add_special_tokens=False)`.

    GPT-2's own BPE goes through tiktoken, the encoder its authors wrote for it: the same ids (tested), about
    4x faster than `tokenizers` per core, which is what preparing a corpus of gigabytes waits on. Any other
    tokenizer (or GPT-2's without tiktoken installed) goes through the tokenizer itself, without its warning
    that a text is longer than the model's context: a corpus's documents are, before they are cut into windows.
    A tokenizer of one token per character looks its ids up by code point (`_character_lookup`).
    """
    fast = _tiktoken_gpt2(tokenizer)
    if fast is not None:
        return lambda texts: [fast.encode_to_numpy(text, allowed_special="all") for text in texts]
    characters = _character_lookup(tokenizer)
    if characters is not None:
        return lambda texts: [characters(text) for text in texts]
    return lambda texts: list(map(np.asarray, tokenizer(texts, add_special_tokens=False, verbose=False).input_ids))


def _character_lookup(tokenizer) -> Callable[[str], np.ndarray] | None:
    """The ids of a text for a tokenizer of one token per character (`train_tokenizer(kind="char")`: a word per
    character, a vocabulary lookup, unknown characters to its unknown token), read from a table indexed by code
    point: `tokenizers`' ids, in 0.02 s instead of 1.4 s for tiny Shakespeare. A text holding an added
    token, which the tokenizer matches whole, goes through the tokenizer. None for any other tokenizer."""
    spec = _spec(tokenizer)
    model = spec.get("model", {})
    if (spec.get("normalizer") is not None or spec.get("pre_tokenizer") != EVERY_CHARACTER
            or model.get("type") != "WordLevel" or model.get("unk_token") not in model.get("vocab", {})):
        return None
    characters = {ord(token): i for token, i in model["vocab"].items() if len(token) == 1}
    table = np.full(max(characters, default=0) + 2, model["vocab"][model["unk_token"]], dtype=np.int64)
    table[list(characters)] = list(characters.values())  # the last entry stays unknown: every code point beyond
    added = [token.content for token in tokenizer.added_tokens_decoder.values()]

    def ids(text: str) -> np.ndarray:
        if any(token in text for token in added):
            return np.asarray(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return table[np.minimum(code_points, len(table) - 1)]

    return ids


def _tiktoken_gpt2(tokenizer):
    """tiktoken's encoder of this tokenizer when it is GPT-2's byte-level BPE (any added tokens split out as
    `tokenizers` splits them), else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = gpt2_style_bpe(tokenizer)
    if spec is None or spec["cuts_long_runs"]:
        return None
    model, added = spec["model"], tokenizer.added_tokens_decoder
    if _bpe_fingerprint(model) != GPT2_BPE_SHA256:
        return None
    byte_of = {char: byte for byte, char in _byte_level_alphabet().items()}
    ranks = {bytes(byte_of[c] for c in token): rank for token, rank in model["vocab"].items() if rank not in added}
    return tiktoken.Encoding("gpt2-bpe", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={t.content: i for i, t in added.items()})


def gpt2_style_bpe(tokenizer) -> dict | None:
    """The `tokenizers` spec of `tokenizer` when it is byte-level BPE as GPT-2's (what other GPT-2 encoders,
    tiktoken and llama.cpp, reproduce): no normalizer, words found by GPT-2's regex, added tokens matched as
    written. Its `cuts_long_runs` is true when runs of 64 non-space characters are cut first, as the BPE of
    `train_tokenizer` does; GPT-2's regex alone keeps them whole. None for any other tokenizer."""
    spec = _spec(tokenizer)
    if not spec:
        return None
    pre, model = spec.get("pre_tokenizer") or {}, spec["model"]
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    long_run_cut = {"type": "Split", "pattern": {"Regex": LONG_RUN}, "behavior": "Isolated", "invert": False}
    cuts_long_runs = steps[:1] == [long_run_cut]
    words = steps[1:] if cuts_long_runs else steps
    gpt2_words = (len(words) == 1 and words[0].get("type") == "ByteLevel" and not words[0].get("add_prefix_space")
                  and words[0].get("use_regex", True))
    plain_bpe = (model.get("type") == "BPE" and model.get("dropout") is None and not model.get("ignore_merges")
                 and not model.get("byte_fallback") and not model.get("continuing_subword_prefix")
                 and not model.get("end_of_word_suffix"))
    added = tokenizer.added_tokens_decoder.values()
    if spec.get("normalizer") is not None or not gpt2_words or not plain_bpe or any(
            t.lstrip or t.rstrip or t.single_word for t in added):
        return None
    return spec | {"cuts_long_runs": cuts_long_runs}


def starts_words_at_line_breaks(tokenizer) -> bool:
    """Whether `tokenizer` starts a new word before every line break that follows a printable ASCII character, so
    that a text cut there encodes to the ids of the whole: byte-level BPE as GPT-2's, and one token per character
    (`train_tokenizer`'s kinds), with no added token spanning a line break."""
    if any("\n" in token.content for token in tokenizer.added_tokens_decoder.values()):
        return False
    if gpt2_style_bpe(tokenizer) is not None:
        return True
    spec = _spec(tokenizer)
    return spec.get("normalizer") is None and spec.get("pre_tokenizer") == EVERY_CHARACTER


def _spec(tokenizer) -> dict:
    """The `tokenizers` JSON of a fast tokenizer (its pipeline: normalizer, pre-tokenizer, model); {} for others."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def _bpe_fingerprint(model: dict) -> str:
    tokens = "\n".join(token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = "\n".join(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    return hashlib.sha256(f"{tokens}\0{merges}".encode()).hexdigest()


def _byte_level_alphabet() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the
    others (controls, space, ...) take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = (b for b in range(256) if b not in printable)
    return {**{b: chr(b) for b in printable}, **{b: chr(0x100 + n) for n, b in enumerate(others)}}
