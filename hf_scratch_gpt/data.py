"""Data with `datasets`: reading local and Hub data, labelled texts for classification (chapter 6),
instruction records and their collator (chapter 7), preference pairs for DPO (chapter 7's bonus). Pretraining
corpora (chapter 2) live in `corpus`."""

import csv
import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset
from transformers import DataCollatorWithFlattening

from .tokenization import read_text_file

_TABLES = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def data_files(source, what: str) -> list[str] | None:
    """The files a local source names (a file, a folder, a glob), or None for a Hub dataset id."""
    path = Path(source)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{what} folder {source} holds no files.")
        return files
    if glob.has_magic(str(source)):
        files = sorted(f for f in glob.glob(str(source), recursive=True) if Path(f).is_file())
        if not files:
            raise ValueError(f"{what} pattern {source} matches no files.")
        return files
    if re.fullmatch(r"[\w-]+(/[\w.-]+)?", str(source)):  # looks like a Hub id: owner/name
        return None
    raise ValueError(f"{what} {source} does not exist.")


def load_hub_dataset(source, what: str, streaming: bool = False) -> Dataset | IterableDataset:
    """The `train` split of a Hub dataset (needs network)."""
    try:
        return load_dataset(str(source), split="train", streaming=streaming)
    except Exception as error:
        raise ValueError(f"{what} {source!r} is not a local file, folder or glob, and loading it from the Hub "
                         f"failed: {error}") from error


def read_tables(source, files: list[str], also: str | None = None, streaming: bool = False):
    """Rows of TSV / CSV / JSON(L) / Parquet files of one type (a stream of them when `streaming`). Tab- and
    comma-separated files are read as they are: no quoting in TSV (messages may start with a quote sign), and
    "NA" stays text. Only a file that datasets cannot read is read again here, to say what is wrong with it."""
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or not suffixes <= _TABLES.keys():
        kinds = f"files of one type among {sorted(_TABLES)}" + (f", or {also}" if also else "")
        raise ValueError(f"{source} has files of types {sorted(suffixes)}: use {kinds}.")
    suffix = suffixes.pop()
    options = {}
    if _TABLES[suffix] == "csv":
        options = {"delimiter": "\t" if suffix == ".tsv" else ",", "na_filter": False}
        if suffix == ".tsv":
            options["quoting"] = csv.QUOTE_NONE
        for f in files:
            if not _has_rows(f):
                raise ValueError(f"Data {f} holds no rows (a header at most).")
    elif _TABLES[suffix] == "json":
        for f in files:
            if not starts_with_a_record_line(f):  # datasets reads a list of numbers as a column of them
                _check_json_records(f)
    try:
        dataset = load_dataset(_TABLES[suffix], data_files=files, split="train", streaming=streaming, **options)
    except Exception as error:
        if _TABLES[suffix] == "json":
            for f in files:
                _check_json_records(f)
        raise ValueError(f"Cannot read {source} as {_TABLES[suffix]}: {error}") from error
    if not streaming and len(dataset) == 0:
        raise ValueError(f"Data {source} holds no rows.")
    return dataset


def starts_with_a_record_line(path: str) -> bool:
    """Whether a JSON file is JSON Lines whose first line is a record: a file datasets reads one line at a time,
    and, when a later line is broken, fails on (JSON lists are read whole anyway, and checked whole here)."""
    with open(path, "rb") as file:
        line = next((line for line in file if line.strip()), b"")
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _has_rows(path: str) -> bool:
    """Whether a CSV / TSV file has a line after its header (read no further than that)."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = (line for line in file if line.strip())
            return next(lines, None) is not None and next(lines, None) is not None
    except UnicodeDecodeError:
        read_text_file(path)  # raises, naming the byte
        raise


def _check_json_records(path: str) -> None:
    """A JSON list of records (objects), or JSON Lines of them: what `datasets` reads as rows."""
    text = read_text_file(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                records.append(json.loads(line) if line.strip() else {})
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is neither JSON nor JSON Lines: line {number}: {error.msg}.") from None
    if not isinstance(records, list):
        records = [records]  # one JSON Lines record, or a lone value
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise ValueError(f"{path} is not a list of records: record {number} is a JSON {type(record).__name__}, "
                             "not an object of fields.")


def load_labelled(source: str | os.PathLike, text_column: str = "text", label_column: str = "label") -> Dataset:
    """A `Dataset` of `text` and `label` columns for classification.

    `source` is a TSV / CSV / JSON / JSONL / Parquet file (or a folder or glob of files of one type)
    holding `text_column` and `label_column`, or, with network, a Hub dataset name (its `train` split).
    """
    files = data_files(source, "Data")
    dataset = load_hub_dataset(source, "Data") if files is None else read_tables(source, files)
    missing = [c for c in (text_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Data {source} has no column {missing[0]!r}; its columns are {dataset.column_names}. "
                         "Name the columns with text_column and label_column.")
    dataset = dataset.select_columns([text_column, label_column])
    if len(dataset) == 0:
        raise ValueError(f"Data {source} holds no rows.")
    _check_values(dataset, [label_column], source, "row")
    return dataset.rename_columns({text_column: "text", label_column: "label"})


def _check_values(dataset: Dataset, columns: list[str], source, what: str) -> None:
    """Every row has a value in `columns` (a record missing a field reads as None; an empty cell as "")."""
    for column in columns:
        missing = next((i for i, value in enumerate(dataset[column]) if value is None or value == ""), None)
        if missing is not None:
            raise ValueError(f"Data {source}: {what} {missing + 1} has no {column!r}; give every {what} one.")


def build_classification_dataset(
    dataset: Dataset,
    tokenizer,
    max_length: int,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 123,
    balance: bool = False,
) -> DatasetDict:
    """Train / validation / test splits of tokenized texts with integer `labels`, as in chapter 6.

    Labels become a `ClassLabel` (string labels sorted into ids; `labels.names` gives them back).
    `balance` undersamples every class to the size of the smallest, as the book does with ham.
    Rows are shuffled with `seed` and cut by `fractions`; texts are truncated to `max_length`
    tokens and left unpadded (a collator pads each batch).
    """
    _check_fractions(fractions)
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length={max_length!r} is invalid: it must be a positive integer.")
    dataset = dataset.filter(lambda row: bool(str(row["text"]).strip()), desc="Dropping empty texts")
    if not isinstance(dataset.features["label"], ClassLabel):
        dataset = dataset.map(lambda row: {"label": str(row["label"]).strip()}).class_encode_column("label")
    names = dataset.features["label"].names
    if len(names) < 2:
        raise ValueError(f"The label column has a single class ({names}); classification needs at least two.")
    labels = np.array(dataset["label"])
    if balance:
        rng = np.random.default_rng(seed)
        smallest = min(np.bincount(labels, minlength=len(names)))
        keep = [rng.choice(np.flatnonzero(labels == c), smallest, replace=False) for c in range(len(names))]
        dataset = dataset.select(np.sort(np.concatenate(keep)))
    splits = split_dataset(dataset, fractions, seed)
    seen = set(splits["train"]["label"])
    for split, rows in splits.items():
        unseen = sorted(names[i] for i in set(rows["label"]) - seen)
        if unseen:
            raise ValueError(f"The {split} split has label(s) {unseen} that the train split never shows; "
                             "give more examples of them, or another split_seed.")

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    tokenized = splits.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")
    return tokenized.rename_column("label", "labels")


def _check_fractions(fractions) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions={list(fractions)} is invalid: give three non-negative train / validation / "
                         "test fractions that sum to 1.")


def split_dataset(dataset: Dataset, fractions=(0.7, 0.1, 0.2), seed: int | None = 123) -> DatasetDict:
    """Train / validation / test splits holding `fractions` of the rows (rounded down, the test split
    takes the rest), after a shuffle with `seed` (`None` keeps the order). A split of fraction 0 is
    left out; any other split that would be empty is an error."""
    _check_fractions(fractions)
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    n = len(dataset)
    train_end = int(n * fractions[0])
    validation_end = train_end + int(n * fractions[1])
    bounds = {"train": (0, train_end), "validation": (train_end, validation_end), "test": (validation_end, n)}
    for (split, (start, end)), fraction in zip(bounds.items(), fractions):
        if fraction > 0 and end <= start:
            raise ValueError(f"The {split} split is empty: {n} rows x {fraction} < 1. Use more data or other "
                             "fractions.")
    return DatasetDict({split: dataset.select(range(start, end)) for split, (start, end) in bounds.items()
                        if end > start})


INSTRUCTION_FIELDS = ("instruction", "input", "output")


def load_instructions(source: str | os.PathLike) -> Dataset:
    """Alpaca-style records with `instruction`, `input` (optional: missing or null becomes "") and
    `output` strings, from a JSON list of records, JSONL, CSV / TSV / Parquet, or a Hub dataset."""
    files = data_files(source, "Data")
    dataset = load_hub_dataset(source, "Data") if files is None else read_tables(source, files)
    missing = [name for name in ("instruction", "output") if name not in dataset.column_names]
    if missing:
        raise ValueError(f"Data {source} has records without an {missing[0]!r} field; their fields are "
                         f"{dataset.column_names}. Instruction data needs 'instruction' and 'output' "
                         "(and optionally 'input') in every record.")
    if "input" not in dataset.column_names:
        dataset = dataset.add_column("input", [""] * len(dataset))
    dataset = dataset.select_columns(list(INSTRUCTION_FIELDS))
    if len(dataset) == 0:
        raise ValueError(f"Data {source} holds no records.")
    _check_values(dataset, ["instruction", "output"], source, "record")
    return dataset.map(lambda row: {k: "" if row[k] is None else str(row[k]) for k in INSTRUCTION_FIELDS})


def instruction_messages(record: dict, with_response: bool = True) -> list[dict]:
    """A record as chat messages for the Alpaca template: the instruction, its input if any, the response."""
    messages = [{"role": "user", "content": record["instruction"]}]
    if record.get("input"):
        messages.append({"role": "input", "content": record["input"]})
    if with_response:
        messages.append({"role": "assistant", "content": record["output"]})
    return messages


def build_instruction_dataset(
    dataset: Dataset, tokenizer, fractions=(0.85, 0.05, 0.10), seed: int | None = None
) -> DatasetDict:
    """Train / validation / test splits of instruction records, formatted by the tokenizer's chat template.

    Each row keeps its fields and gains `input_ids` (prompt, response, end-of-text) and
    `prompt_length` (how many of them are prompt). Prompt and response are tokenized apart, so the
    prompt tokens are exactly those `apply_chat_template(..., add_generation_prompt=True)` gives at
    generation time. The default keeps the file's order, as the book splits its shuffled set.
    """
    if tokenizer.chat_template is None:
        raise ValueError("The tokenizer has no chat template to format instructions with; set "
                         "tokenizer.chat_template (hf_scratch_gpt.tokenization.ALPACA_CHAT_TEMPLATE is the book's).")

    def tokenize(record):
        prompt = tokenizer.apply_chat_template(instruction_messages(record, False), tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(instruction_messages(record), tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("The chat template writes the prompt differently when a response follows; "
                             "use a template whose generation prompt is a prefix of the full conversation.")
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        response_ids = tokenizer(full[len(prompt):], add_special_tokens=False).input_ids
        return {"input_ids": prompt_ids + response_ids, "prompt_length": len(prompt_ids)}

    return split_dataset(dataset, fractions, seed).map(tokenize, desc="Formatting and tokenizing")



def load_preferences(source: str | os.PathLike, drop_identical_pairs: bool = False) -> Dataset:
    """Preference pairs: the book's records (`instruction`, optional `input`, `chosen`, `rejected`; other fields
    such as `output` kept) or TRL's (`prompt`, `chosen`, `rejected`: texts, or conversations), from the files
    `load_instructions` reads or a Hub dataset. A pair whose responses are equal prefers nothing: refused, or left
    out with `drop_identical_pairs` (the book's own set has six)."""
    files = data_files(source, "Data")
    dataset = load_hub_dataset(source, "Data") if files is None else read_tables(source, files)
    columns = dataset.column_names
    prompt = "prompt" if "prompt" in columns else "instruction"
    missing = [name for name in (prompt, "chosen", "rejected") if name not in columns]
    if missing:
        raise ValueError(f"Data {source} has records without a {missing[0]!r} field; their fields are {columns}. "
                         "Preference data needs 'instruction' (and optionally 'input') or 'prompt', with "
                         "'chosen' and 'rejected' responses, in every record.")
    if len(dataset) == 0:
        raise ValueError(f"Data {source} holds no records.")
    _check_values(dataset, [prompt, "chosen", "rejected"], source, "record")
    if prompt == "instruction":
        if "input" not in columns:
            dataset = dataset.add_column("input", [""] * len(dataset))
        dataset = dataset.map(lambda row: {"input": row["input"] or ""})
    identical = [i for i, (chosen, rejected) in enumerate(zip(dataset["chosen"], dataset["rejected"]))
                 if chosen == rejected]
    if identical and not drop_identical_pairs:
        raise ValueError(f"Data {source}: {len(identical)} record(s) have a chosen response equal to the rejected "
                         f"one (the first is record {identical[0] + 1}), a pair that prefers nothing; remove them, "
                         "or pass --drop_identical_pairs to leave them out.")
    return dataset.select(sorted(set(range(len(dataset))) - set(identical))) if identical else dataset


def preference_pair(record: dict) -> dict:
    """A record as TRL's preference pair. The book's records become conversations in the Alpaca template's roles,
    so that TRL writes them with the tokenizer's chat template (the prompt exactly as at generation time, each
    response closed by end-of-text); TRL's own pairs pass as they are."""
    if "prompt" in record:
        return {name: record[name] for name in ("prompt", "chosen", "rejected")}
    return {"prompt": instruction_messages(record, with_response=False),
            "chosen": [{"role": "assistant", "content": record["chosen"]}],
            "rejected": [{"role": "assistant", "content": record["rejected"]}]}

@dataclass
class InstructionCollator:
    """Batches of instruction rows for causal-LM training (the book's `custom_collate_fn`).

    Rows are cut to `max_length` and padded on the right with `pad_token_id`. `labels` equal
    `input_ids` (the model shifts them) except -100 on the padding, and on the prompt when
    `mask_prompt` (the loss then scores the response only). Padding is told apart by position,
    not by id, so the end-of-text token that ends each response stays a target even when it is
    also the pad token: the model learns to stop.

    With `packing`, the rows go one after another in a single row without padding, their positions
    restarting at 0 (transformers' `DataCollatorWithFlattening`, which also keeps the first token of
    each row out of the loss): the same targets, hence the same loss, for no compute spent on padding.
    `pad_to_multiple_of` then ends the row with a filler sequence of padding, out of the loss: kernels
    tuned per shape (oneDNN's on CPUs) see a few row lengths again and again instead of a new one each batch.
    """

    pad_token_id: int
    max_length: int | None = None
    mask_prompt: bool = True
    pad_to_multiple_of: int | None = None
    packing: bool = False

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.mask_prompt and any("prompt_length" not in f for f in features):
            raise ValueError("InstructionCollator(mask_prompt=True) needs each row's prompt_length (rows from "
                             "build_instruction_dataset have it; keep it with remove_unused_columns=False).")
        rows = [list(f["input_ids"])[: self.max_length] for f in features]
        first_targets = [min(f["prompt_length"], len(row)) if self.mask_prompt else 0 for f, row in zip(features, rows)]
        if self.packing:
            labelled = [{"input_ids": row, "labels": [-100] * first + row[first:]}
                        for row, first in zip(rows, first_targets)]
            short = -sum(map(len, rows)) % (self.pad_to_multiple_of or 1)
            while short > 0:  # filler sequences of their own (each within max_length), out of the loss
                filler = min(short, self.max_length or short)
                labelled.append({"input_ids": [self.pad_token_id] * filler, "labels": [-100] * filler})
                short -= filler
            return DataCollatorWithFlattening(return_tensors="pt")(labelled)
        width = max(map(len, rows))
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for i, (row, first) in enumerate(zip(rows, first_targets)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            labels[i, first : len(row)] = input_ids[i, first : len(row)]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
