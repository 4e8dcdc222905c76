"""Data sampling (chapter 2) with `datasets`: load a corpus, tokenize it, cut it into windows."""

import glob
import os
import re
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from .tokenization import read_text_file

PYTHON_DOCS = "python-docs"
_STRUCTURED = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_corpus(source: str | os.PathLike = PYTHON_DOCS, text_column: str = "text") -> Dataset:
    """A `Dataset` with one document per row in a `text` column.

    `source` is `"python-docs"` (Python's bundled documentation: offline, everywhere), a text file,
    a folder or glob of them (`.txt` files are whole documents; `.json`/`.jsonl`/`.csv`/`.parquet`
    rows give `text_column`), or, with network, a Hub dataset name (its `train` split).
    """
    if str(source) == PYTHON_DOCS:
        from pydoc_data.topics import topics

        return Dataset.from_dict({"text": [topics[name] for name in sorted(topics)]})
    files = _corpus_files(source)
    if files is None:  # not a local path: a Hub dataset name
        try:
            hub_dataset = load_dataset(str(source), split="train")
        except Exception as error:
            raise ValueError(
                f"Corpus {source!r} is not a local file, folder or glob, and loading it from the Hub failed: {error}"
            ) from error
        return _require_text(hub_dataset, text_column, str(source))
    suffixes = {Path(f).suffix.lower() for f in files}
    if suffixes <= {".txt", ".text", ".md", ""}:
        builder = "text"
    elif len(suffixes) == 1 and suffixes <= _STRUCTURED.keys():
        builder = _STRUCTURED[suffixes.pop()]
    else:
        raise ValueError(
            f"Corpus {source} has files of types {sorted(suffixes)}: use text files (.txt, .md), or files of "
            f"one type among {sorted(_STRUCTURED)} with a {text_column!r} column."
        )
    if builder != "parquet":
        for f in files:
            read_text_file(f)  # our clear error for non-UTF-8 text, naming the file and byte
    options = {"sample_by": "document"} if builder == "text" else {}  # a text file is one document
    dataset = load_dataset(builder, data_files=files, split="train", **options)
    dataset = _require_text(dataset, text_column if builder != "text" else "text", str(source))
    if not any(text.strip() for text in dataset["text"]):
        raise ValueError(f"Corpus {source} is empty: its {len(files)} file(s) hold no text.")
    return dataset


def _corpus_files(source) -> list[str] | None:
    path = Path(source)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"Corpus folder {source} holds no files.")
        return files
    if glob.has_magic(str(source)):
        files = sorted(f for f in glob.glob(str(source), recursive=True) if Path(f).is_file())
        if not files:
            raise ValueError(f"Corpus pattern {source} matches no files.")
        return files
    if re.fullmatch(r"[\w-]+(/[\w.-]+)?", str(source)):  # looks like a Hub id: owner/name
        return None
    raise ValueError(f"Corpus {source} does not exist.")


def _require_text(dataset: Dataset, text_column: str, source: str) -> Dataset:
    if text_column not in dataset.column_names:
        raise ValueError(
            f"Corpus {source} has no {text_column!r} column; its columns are {dataset.column_names}. "
            "Name the text column with text_column."
        )
    dataset = dataset.select_columns([text_column])
    return dataset.rename_column(text_column, "text") if text_column != "text" else dataset


def build_lm_dataset(
    dataset: Dataset,
    tokenizer,
    max_length: int,
    stride: int | None = None,
    validation_fraction: float = 0.1,
    seed: int | None = None,
    num_proc: int | None = None,
) -> DatasetDict:
    """Windows of `max_length` tokens for next-token prediction, as the book's `GPTDatasetV1`.

    Documents are tokenized (`map(batched=True)`) and joined with `<|endoftext|>` into one stream,
    shuffled first when `seed` is given. The last `validation_fraction` of the stream is held out,
    so no window straddles the two splits. Windows start at 0, stride, 2*stride, ... of each split
    and hold exactly `max_length` tokens (a short tail is dropped); `stride == max_length` (the
    default) means no overlap. Columns: `input_ids` and `labels` (equal: the model shifts).
    Every step is cached by datasets' fingerprint.
    """
    stride = max_length if stride is None else stride
    for name, value in (("max_length", max_length), ("stride", stride)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} is invalid: {name} must be a positive integer.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} is invalid: it must be in [0, 1).")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no end-of-text token to join documents with; set its eos_token.")
    if len(dataset) == 0:
        raise ValueError("The corpus has no documents.")
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids]}

    tokens = dataset.map(tokenize, batched=True, num_proc=num_proc, remove_columns=dataset.column_names,
                         desc="Tokenizing")
    total = sum(len(ids) for ids in tokens["input_ids"])
    validation_tokens = int(total * validation_fraction)
    splits = {"train": (0, total - validation_tokens, stride)}
    if validation_fraction > 0:
        splits["validation"] = (total - validation_tokens, total, max_length)  # each token scored once

    result = {}
    for split, (start, end, split_stride) in splits.items():
        if end - start < max_length:
            raise ValueError(
                f"The {split} split has {end - start} tokens, fewer than one window of max_length={max_length}: "
                "use more text, a smaller max_length or a smaller validation_fraction."
            )
        result[split] = tokens.map(
            _cut_windows,
            batched=True,
            batch_size=None,  # one stream: windows may cross document boundaries, as in the book
            remove_columns=["input_ids"],
            fn_kwargs={"start": start, "end": end, "max_length": max_length, "stride": split_stride},
            desc=f"Cutting {split} windows",
        )
    return DatasetDict(result)


def _cut_windows(batch, start, end, max_length, stride):
    stream = [token for doc in batch["input_ids"] for token in doc][start:end]
    windows = [stream[i : i + max_length] for i in range(0, len(stream) - max_length + 1, stride)]
    return {"input_ids": windows, "labels": windows}
