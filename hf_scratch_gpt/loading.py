"""Loading the models and tokenizers a user names, with errors that say what is wrong with them.

Nothing here runs code that came with a model: this package's classes are registered with the Auto
classes, so `trust_remote_code` stays off, and a folder or repo that needs code of its own is refused.
"""

import json
import re
from pathlib import Path

from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

from .convert import from_gpt2
from .tokenization import gpt2_tokenizer

MODEL_TYPES = ("scratch_gpt", "gpt2")  # ours, and GPT-2's (converted on the way in)
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def load_config(source: str):
    """The config of the model in `source` (a folder or Hub id), checked to be ours or GPT-2's."""
    if _is_local(source):
        _check_supported(source, _config_fields(Path(source)).get("model_type"))  # before any code is looked for
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as error:
        raise ValueError(f"Cannot load the config of {source}: {one_line(error)}") from error
    _check_supported(source, config.model_type)
    return config


def _is_local(source) -> bool:
    """Whether `source` is a local path; False for a Hub id, an error for a path that does not exist."""
    if Path(source).exists():
        return True
    if not _HUB_ID.fullmatch(str(source)):
        raise ValueError(f"Model {source} does not exist; give a folder written by save_pretrained, or a Hub id.")
    return False


def _config_fields(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a model folder: it has no config.json. Give a folder written by "
                         "save_pretrained.")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); save the model again.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} holds a JSON {type(fields).__name__}, not an object of config fields.")
    return fields


def _check_supported(source, model_type) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{source} holds a {model_type!r} model; give a model this package saved, or a GPT-2 one.")


def load_tokenizer(source: str, pad_with_eos: bool = False, config=None):
    """The tokenizer saved with `source`, or GPT-2's from a folder of OpenAI's released `encoder.json` and
    `vocab.bpe` (what the book downloads); with `pad_with_eos`, padding with end-of-text when it has no pad
    token (as the book does). `config`: the model's, when `load_config` has already checked it."""
    if _is_local(source):
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"{source} is not a folder; give the folder a model and its tokenizer were saved to.")
        if _is_openai_release(folder):
            return gpt2_tokenizer(folder / "encoder.json", folder / "vocab.bpe")  # pads with end-of-text already
        checked = config is not None or not (folder / "config.json").exists()
        if not checked and _config_fields(folder).get("model_type") in MODEL_TYPES:
            load_config(source)  # the tokenizer reads the model's config: check it first
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as error:
        raise ValueError(f"Cannot load the tokenizer of {source}: {one_line(error)}") from error
    for how_it_was_loaded in ("is_local", "local_files_only"):  # not settings to save with a trained model
        tokenizer.init_kwargs.pop(how_it_was_loaded, None)
    if pad_with_eos and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# What a saved tokenizer leaves in a folder: the fast tokenizer, its settings, or GPT-2's vocabulary files.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "encoder.json")


def _is_openai_release(folder: Path) -> bool:
    """A folder of GPT-2's tokenizer files as OpenAI released them, and nothing transformers saved."""
    return (all((folder / name).is_file() for name in ("encoder.json", "vocab.bpe"))
            and not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")))


def has_tokenizer(source: str) -> bool:
    """Whether `source` comes with a tokenizer: a local folder without any tokenizer file is a bare checkpoint
    (a Hub repo is assumed to have one; loading it then says if not)."""
    return not _is_local(source) or any((Path(source) / name).is_file() for name in TOKENIZER_FILES)


def load_model(source: str, model_class, tokenizer=None, config=None, **config_updates):
    """`model_class` holding the weights of `source` (a model of ours, or GPT-2's converted) and, when
    its head is new, initialised as `from_pretrained` initialises missing weights. With `tokenizer`,
    checks that the model knows every token id it produces. `config`: as `load_config` returned it, if it ran."""
    config = load_config(source) if config is None else config
    try:
        if config.model_type == "gpt2":
            converted = from_gpt2(source)
            converted.config.update(config_updates)
            if isinstance(converted, model_class):
                model = converted
            else:
                model = model_class(converted.config)
                model.model.load_state_dict(converted.model.state_dict())
        else:
            model = model_class.from_pretrained(source, trust_remote_code=False, **config_updates)
    except SafetensorError as error:
        raise ValueError(f"The weights in {source} cannot be read ({error}): the file is truncated or corrupted; "
                         "save or download the model again.") from error
    except OSError as error:
        raise ValueError(f"Cannot load the weights of {source}: {one_line(error)}") from error
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the vocabulary of the model in {source} "
                         f"holds {model.config.vocab_size}: use the tokenizer the model was trained with.")
    return model


def one_line(error: Exception) -> str:
    """An exception's message on one line (library messages often spread over several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
