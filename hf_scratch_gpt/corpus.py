"""Pretraining corpora (chapter 2) of any size, sampled with `datasets`.

A corpus is read by `datasets` (`load_corpus`; JSON Lines and large text files in byte ranges by every core,
`_FileReader`), tokenized once into its Arrow cache as the smallest integer type that holds the vocabulary
(`tokenize_corpus`: 2 bytes a token for GPT-2, against ~36 for a Python int; files given by their path are
tokenized where they lie, their text never copied), and read back as one stream of tokens in place
(`TokenStream`). A training window is only a start offset into that stream: its tokens are sliced out when a
batch is drawn (`build_lm_dataset`), so memory does not grow with the corpus. A corpus larger than the disk, or
one straight from the Hub, is streamed instead and cut into windows on the fly (`stream_lm_dataset`), resumably.
"""

import collections
import copy
import ctypes
import functools
import hashlib
import json
import mmap
import os
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset, Value, load_dataset
from datasets.distributed import split_dataset_by_node

from .command import package_version
from .data import data_files, load_hub_dataset, read_tables, starts_with_a_record_line
from .tokenization import batch_encoder, check_utf8, starts_words_at_line_breaks

PYTHON_DOCS = "python-docs"
TOKEN_DTYPES = ("uint16", "uint32")
_BIG_CORPUS = 32 * 2**20  # bytes of text from which tokenizing in every core pays for starting the processes
PIECE_BYTES = 4 * 2**20  # files are read in byte ranges of this size (`_file_ranges`), text files in pieces of about
# this size (`_TextPieces`). A worker holds one range's text and ids at a time: with 16 MB ranges, preparing 1 GB of
# JSON Lines peaked at 1.03 GB (PSS), growing with the corpus; with 4 MB, 0.70 GB at 100 MB and 1 GB, as fast.
TEXT_SUFFIXES = {".txt", ".text", ".md", ""}


def load_corpus(source: str | os.PathLike = PYTHON_DOCS, text_column: str = "text", streaming: bool = False
                ) -> Dataset | IterableDataset:
    """A `Dataset` with one document per row in a `text` column (an `IterableDataset` when `streaming`).

    `source` is `"python-docs"` (Python's bundled documentation: offline, everywhere), a text file,
    a folder or glob of them (`.txt` files are whole documents; rows of `.tsv`/`.csv`/`.json(l)`/`.parquet`
    files give `text_column`), or, with network, a Hub dataset name (its `train` split). Files are read by
    `datasets` into its cache (or streamed), never whole into Python.
    """
    if str(source) == PYTHON_DOCS:
        from pydoc_data.topics import topics

        corpus = Dataset.from_dict({"text": [topics[name] for name in sorted(topics)]})
        return corpus.to_iterable_dataset() if streaming else corpus
    files = data_files(source, "Corpus")
    if files is None:
        corpus = load_hub_dataset(source, "Corpus", streaming)
    elif _all_text(files):
        for f in files:
            check_utf8(f)
        if not streaming and any(os.path.getsize(f) > PIECE_BYTES for f in files):
            # Each file is still one document, in pieces: never whole in memory, read and tokenized by every core.
            corpus = _read_in_ranges(files, _TextPieces(), num_proc=None)
        else:
            corpus = load_dataset("text", data_files=files, split="train", sample_by="document", streaming=streaming)
        text_column = "text"  # a file is a document
    elif not streaming and _all_json_lines(files):
        corpus = _read_in_ranges(files, _JsonLinesRecords(text_column), num_proc=None)
        text_column = "text"
    else:
        corpus = read_tables(source, files, also="text files (.txt, .md)", streaming=streaming)
    corpus = _require_text(corpus, text_column, str(source))
    if not streaming and not any(text.strip() for batch in corpus.iter(batch_size=1) for text in batch["text"]):
        raise ValueError(f"Corpus {source} is empty: its {len(files or [])} file(s) hold no text.")
    return corpus


def _file_ranges(files: list[str]) -> Dataset:
    """The files in byte ranges of `PIECE_BYTES`, a row each, in datasets' cache: what is read from them
    (`_FileReader`) is cached beside it, and each file's size and modification time name the cache, so a changed
    file is read again."""
    rows = []
    for path in files:
        stat = os.stat(path)
        rows += [{"path": str(path), "size": stat.st_size, "modified": stat.st_mtime_ns, "start": start,
                  "end": min(start + PIECE_BYTES, stat.st_size)} for start in range(0, stat.st_size, PIECE_BYTES)]
    features = Features({"path": Value("string"), **{name: Value("int64") for name in ("size", "modified", "start",
                                                                                       "end")}})
    return Dataset.from_generator(_rows, gen_kwargs={"rows": rows}, features=features)


def _rows(rows: list[dict]):
    yield from rows


def _read_in_ranges(files: list[str], reader: "_FileReader", num_proc: int | None) -> Dataset:
    """Files read in byte ranges by `num_proc` processes (every core past `_BIG_CORPUS` bytes): datasets reads a
    file in one process, which alone writes the Arrow copy of its text (for JSON Lines, 10 of the 40 s that
    preparing 1 GB took on 2 cores)."""
    ranges = _file_ranges(files)
    size = sum(ranges["end"]) - sum(ranges["start"])  # the ranges tile the files
    if num_proc is None and size >= _BIG_CORPUS:
        num_proc = min(os.cpu_count() or 1, len(ranges))
    what = f"{len(files)} {reader.kind} file(s) ({size / 2**20:,.0f} MB)"
    return ranges.with_format("arrow").map(
        reader, batched=True, batch_size=1, num_proc=num_proc, remove_columns=ranges.column_names,
        desc=f"Tokenizing {what}" if reader.tokens else f"Reading {what}").with_format(None)


class _FileReader:
    """The `Dataset.map` function that reads files where they lie: Arrow batches of byte ranges (`_file_ranges`)
    to the texts in them, or, given `tokens` (`_DocumentTokens`), straight to their ids, so that the text is never
    copied into Arrow nor into datasets' cache: preparing a corpus reads it once, as nanoGPT's `prepare.py` does.
    `texts(row)` says what a range holds: (text, whether a document ends with it) pairs."""

    kind = ""
    pieces = False  # whether a document may go on into the next range: rows then say where each one ends

    def __init__(self, tokens: "_DocumentTokens | None" = None):
        self.tokens = tokens

    def __getstate__(self):  # datasets names its cache from this: a release that reads differently reads again
        return {**self.__dict__, "version": package_version()}

    def __setstate__(self, state):
        self.__dict__.update({key: value for key, value in state.items() if key != "version"})

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = [pair for row in batch.to_pylist() for pair in self.texts(row)]
        texts, ends = [text for text, _ in pairs], [end for _, end in pairs]
        table = self.tokens.table(texts, ends) if self.tokens else pa.table({"text": pa.array(texts, pa.string())})
        return table.append_column("document_end", pa.array(ends, pa.bool_())) if self.pieces else table

    def texts(self, row: dict):
        raise NotImplementedError


class _JsonLinesRecords(_FileReader):
    """JSON Lines files, a record (a line) at a time: the `text_column` of each record that starts in the range
    (the line under way at its start belongs to the range before); a blank line is passed over."""

    kind = "JSON Lines"

    def __init__(self, text_column: str, tokens: "_DocumentTokens | None" = None):
        super().__init__(tokens)
        self.text_column = text_column

    def texts(self, row: dict):
        with open(row["path"], "rb") as file:
            file.seek(max(row["start"] - 1, 0))
            if row["start"]:
                file.readline()
            while (offset := file.tell()) < row["end"] and (line := file.readline()):
                if line.strip():
                    yield _record_text(line, self.text_column, row["path"], offset), True


class _TextPieces(_FileReader):
    """Text files, each one document, in pieces: a range's piece runs from the first line break after a
    printable ASCII character at or after its start to the first one at or after its end (`_next_cut`).

    Byte-level BPE as GPT-2's starts a new word at every such point (no word of its regex spans a character and
    a following line break, and none looks behind), and a character tokenizer at every character, so the pieces
    encode to exactly the ids of the whole text (`tokenize_corpus` joins them again for any other tokenizer). The
    cut is a character boundary: ASCII bytes never occur inside a longer UTF-8 sequence."""

    kind = "text"
    pieces = True

    def texts(self, row: dict):
        with open(row["path"], "rb") as file:
            first, last = _next_cut(file, row["start"]), _next_cut(file, row["end"])
            file.seek(first)
            data = file.read(last - first)
        try:
            yield data.decode("utf-8"), last == row["size"]
        except UnicodeDecodeError:
            check_utf8(row["path"])  # names the file and the byte
            raise


_CUT = re.compile(rb"[\x21-\x7e]\n")


def _next_cut(file, offset: int, block: int = 2**16) -> int:
    """The offset of the first line break after a printable ASCII character at or after `offset` in `file` (0
    for 0, the end of the file if there is none): where `_TextPieces` cuts."""
    if offset == 0:
        return 0
    file.seek(offset - 1)  # the character before a line break at `offset` decides
    position, data = offset - 1, file.read(block)
    while len(data) > 1:
        if match := _CUT.search(data):
            return position + match.start() + 1
        position += len(data) - 1
        data = data[-1:] + file.read(block)
    return position + len(data)


def _all_json_lines(files: list[str]) -> bool:
    return all(Path(f).suffix.lower() in (".json", ".jsonl") and starts_with_a_record_line(f) for f in files)


def _all_text(files: list[str]) -> bool:
    return {Path(f).suffix.lower() for f in files} <= TEXT_SUFFIXES


def _record_text(line: bytes, text_column: str, path: str, offset: int) -> str:
    """The text of one JSON Lines record, or a ValueError naming the file, the line and what is wrong with it."""
    try:
        record = json.loads(line)
    except ValueError as error:
        problem = f"is not JSON ({error})"
    else:
        if not isinstance(record, dict):
            problem = f"is not a record (a JSON object) but {type(record).__name__}"
        elif text_column not in record:
            problem = (f"has no {text_column!r} column; its columns are {list(record)}. Name the text column "
                       "with text_column")
        elif not isinstance(record[text_column], str):
            problem = f"has {record[text_column]!r} in its {text_column!r} column, not text"
        else:
            return record[text_column]
    with open(path, "rb") as file:
        number = file.read(offset).count(b"\n") + 1
    raise ValueError(f"Corpus {path}: line {number} {problem}.")


def _require_text(corpus, text_column: str, source: str):
    columns = corpus.column_names
    if columns is None:  # a stream that does not say its columns: its first document does
        first = next(iter(corpus.take(1)), None)
        if first is None:
            raise ValueError(f"Corpus {source} is empty: the stream holds no documents.")
        columns = list(first)
    if text_column not in columns:
        raise ValueError(f"Corpus {source} has no {text_column!r} column; its columns are {columns}. "
                         "Name the text column with text_column.")
    corpus = corpus.select_columns([text_column, *(["document_end"] if "document_end" in columns else [])])
    return corpus.rename_column(text_column, "text") if text_column != "text" else corpus


def storage_dtype(tokenizer, name: str | None = None) -> np.dtype:
    """The integer type tokens are stored in: `name`, or the smallest that holds every id of the tokenizer."""
    size = len(tokenizer)
    if name is None:
        name = "uint16" if size <= 2**16 else "uint32"
    if name not in TOKEN_DTYPES:
        raise ValueError(f"token_dtype={name!r} is invalid: use one of {list(TOKEN_DTYPES)}.")
    if size - 1 > np.iinfo(name).max:
        raise ValueError(f"The tokenizer has {size} tokens, and {name} holds ids up to {np.iinfo(name).max}: "
                         "use token_dtype='uint32'.")
    return np.dtype(name)


class _DocumentTokens:
    """The `Dataset.map` function of `tokenize_corpus`: Arrow batches of texts to lists of their ids, each ended
    with the end-of-text token. It pickles as its tokenizer, type and the package's version (datasets hashes it to
    name the cache, so a release that tokenizes differently does not read an older one's tokens, and sends it to
    worker processes); the encoder is made where it runs. `page_out`: see `_page_out`."""

    def __init__(self, tokenizer, dtype: str, page_out: bool = False):
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no end-of-text token to join documents with; set its eos_token.")
        self.tokenizer, self.dtype, self.page_out = tokenizer, dtype, page_out

    def __getstate__(self):
        return {"tokenizer": self.tokenizer, "dtype": self.dtype, "page_out": self.page_out,
                "version": package_version()}

    def __setstate__(self, state):
        self.__init__(state["tokenizer"], state["dtype"], state["page_out"])

    @functools.cached_property
    def encode(self):
        return batch_encoder(self.tokenizer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        pieces = "document_end" in batch.column_names  # kept, so that shuffling keeps a document's pieces together
        tokens = self.table(batch.column("text").to_pylist(),
                            batch.column("document_end").to_pylist() if pieces else None)
        if self.page_out:
            _page_out(batch.column("text"))
        return tokens.append_column("document_end", batch.column("document_end")) if pieces else tokens

    def table(self, texts: list[str], ends: list[bool] | None = None) -> pa.Table:
        """The ids of `texts` in an `input_ids` column, each ended with the end-of-text token where `ends` (by
        default every text) says a document ends."""
        ids = self.encode(texts)
        ends = [True] * len(ids) if ends is None else ends
        eos = np.array([self.tokenizer.eos_token_id], dtype=self.dtype)
        parts = [part for doc, end in zip(ids, ends) for part in ((doc, eos) if end else (doc,))]
        # ids fit the type (`storage_dtype`): written into it straight away, whatever integer type encoding gave
        values = np.concatenate([np.zeros(0, dtype=self.dtype), *parts], dtype=self.dtype, casting="unsafe")
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(doc) + end for doc, end in zip(ids, ends)], out=offsets[1:])
        return pa.table({"input_ids": pa.LargeListArray.from_arrays(offsets, values)})


_MADV_PAGEOUT = 21  # Linux 5.4+


def _page_out(column: pa.ChunkedArray) -> None:
    """Hand the pages of texts already tokenized back to the kernel (`madvise(MADV_PAGEOUT)`).

    datasets reads its cache through a memory map, and the pages a process has read stay in its resident memory
    until it exits: tokenizing a corpus would hold all of it, growing with the corpus (1 GB of text: 1 GB more).
    Only whole pages inside the column's buffers are named, and the advice never changes what memory holds: a
    file's clean pages are dropped (read again if touched), anything else stays.
    """
    if sys.platform != "linux":
        return
    for chunk in column.chunks:
        for buffer in chunk.buffers():
            if buffer is not None:
                start = -(-buffer.address // mmap.PAGESIZE) * mmap.PAGESIZE
                end = (buffer.address + buffer.size) // mmap.PAGESIZE * mmap.PAGESIZE
                if end > start:
                    _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def tokenize_corpus(corpus: Dataset | str | os.PathLike, tokenizer, num_proc: int | None = None,
                    dtype: str | None = None, text_column: str = "text") -> Dataset:
    """Every document's token ids followed by `<|endoftext|>`, in an `input_ids` column of `storage_dtype`.

    `corpus` is a `Dataset` of documents (`load_corpus`) or a source as `load_corpus` takes it, `text_column`
    naming its text: JSON Lines files, and text files for a tokenizer that `_TextPieces` can cut for, are then
    tokenized where they lie, read once by every core, their text never copied into Arrow (`_FileReader`); any
    other source is loaded first. Written once to datasets' cache (file corpora; a second call with the same
    corpus and tokenizer reads it back in a moment). `num_proc` defaults to every core past a few tens of MB.
    """
    dtype = storage_dtype(tokenizer, dtype).name
    if not isinstance(corpus, Dataset):
        files = None if str(corpus) == PYTHON_DOCS else data_files(corpus, "Corpus")
        reader = _reader_in_place(files, text_column, _DocumentTokens(tokenizer, dtype))
        if reader is None:
            return tokenize_corpus(load_corpus(corpus, text_column), tokenizer, num_proc, dtype)
        tokens = _read_in_ranges(files, reader, num_proc)
        if len(tokens) == 0:
            raise ValueError(f"Corpus {corpus} is empty: its {len(files)} file(s) hold no text.")
        return tokens
    if "document_end" in corpus.column_names and not starts_words_at_line_breaks(tokenizer):
        corpus = Dataset.from_generator(_whole_documents, gen_kwargs={"pieces": corpus})  # see `_TextPieces`
    if num_proc is None:
        num_proc = os.cpu_count() if corpus.data.nbytes >= _BIG_CORPUS and len(corpus) > 1 else None
    megabytes = corpus.data.nbytes / 2**20
    memory_mapped = bool(corpus.cache_files) and corpus._indices is None  # batches are views of the cache files
    pieces = "document_end" in corpus.column_names  # rows of PIECE_BYTES each: one at a time
    return corpus.with_format("arrow").map(
        _DocumentTokens(tokenizer, dtype, page_out=memory_mapped), batched=True, batch_size=1 if pieces else 1000,
        num_proc=num_proc,
        remove_columns=corpus.column_names,
        desc=f"Tokenizing {len(corpus):,} documents ({megabytes:,.0f} MB)").with_format(None)


def _reader_in_place(files: list[str] | None, text_column: str, tokens: "_DocumentTokens") -> "_FileReader | None":
    """The reader that tokenizes `files` where they lie, or None where they are to be loaded first."""
    if files and _all_json_lines(files):
        return _JsonLinesRecords(text_column, tokens)
    if files and _all_text(files) and starts_words_at_line_breaks(tokens.tokenizer):
        return _TextPieces(tokens)
    return None


def _whole_documents(pieces: Dataset):
    """The documents of a corpus read in pieces (`_TextPieces`), each joined whole again."""
    parts = []
    for batch in pieces.iter(batch_size=64):
        for text, end in zip(batch["text"], batch["document_end"]):
            parts.append(text)
            if end:
                yield {"text": "".join(parts)}
                parts = []


def _shuffled(dataset: Dataset, seed: int) -> Dataset:
    """`dataset` with its documents in a random order; a document read in pieces keeps them together, in order."""
    if "document_end" not in dataset.column_names:
        return dataset.shuffle(seed=seed)
    ends = np.flatnonzero(dataset.with_format("numpy")["document_end"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    order = np.random.default_rng(seed).permutation(len(ends))
    return dataset.select(np.concatenate([np.arange(starts[d], ends[d] + 1) for d in order]))


class TokenStream:
    """The tokens of a tokenized corpus (`tokenize_corpus`) as one sequence, read in place.

    Each Arrow record batch's document lists flatten, without a copy, into a numpy view of datasets' (memory-
    mapped) cache, so slicing out a window copies only that window. It pickles as the dataset, which datasets
    pickles as the paths of its cache files: DataLoader workers map the same files.
    """

    def __init__(self, tokens: Dataset):
        if tokens._indices is not None:
            tokens = tokens.flatten_indices()
        self.tokens = tokens

    def __getstate__(self):
        return {"tokens": self.tokens}

    def __setstate__(self, state):
        self.tokens = state["tokens"]

    @functools.cached_property
    def _pieces(self) -> tuple[list[np.ndarray], np.ndarray]:
        pieces = [chunk.flatten().to_numpy() for chunk in self.tokens.data.column("input_ids").chunks]
        pieces = [piece for piece in pieces if len(piece)] or [np.zeros(0, dtype=np.uint16)]
        return pieces, np.cumsum([0] + [len(piece) for piece in pieces])

    def __len__(self) -> int:
        return int(self._pieces[1][-1])

    def __getitem__(self, window: slice) -> np.ndarray:
        pieces, starts = self._pieces
        start, stop, _ = window.indices(len(self))
        first = np.searchsorted(starts, start, side="right") - 1
        last = np.searchsorted(starts, stop, side="left")
        parts = [pieces[i][max(start - starts[i], 0) : stop - starts[i]] for i in range(first, max(last, first + 1))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Windows:
    """The format transform of `build_lm_dataset`: rows that hold a window's start read as its tokens."""

    def __init__(self, stream: TokenStream, max_length: int):
        self.stream, self.max_length = stream, max_length

    def __call__(self, batch: dict) -> dict:
        windows = [self.stream[start : start + self.max_length].tolist() for start in batch["start"]]
        return {"input_ids": windows, "labels": windows}


def windows_of(stream: TokenStream, start: int, end: int, max_length: int, stride: int) -> Dataset:
    """The windows of `stream[start:end]` as the book's `GPTDatasetV1` cuts them: at start, start + stride, ...,
    each `max_length` tokens, a short tail dropped. Rows store the start; they read as `input_ids` and `labels`
    (equal: the model shifts), so training with `Trainer` needs `remove_unused_columns=False`."""
    starts = np.arange(start, end - max_length + 1, stride, dtype=np.int64)
    return Dataset.from_dict({"start": starts}).with_transform(_Windows(stream, max_length))


def _window_stride(max_length, stride) -> int:
    """The distance between windows (`max_length` by default: no overlap), both checked."""
    stride = max_length if stride is None else stride
    for name, value in (("max_length", max_length), ("stride", stride)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} is invalid: {name} must be a positive integer.")
    return stride


def build_lm_dataset(
    dataset: Dataset | str | os.PathLike, tokenizer, max_length: int, stride: int | None = None,
    validation_fraction: float = 0.1,
    seed: int | None = None,
    num_proc: int | None = None,
    token_dtype: str | None = None,
    text_column: str = "text",
) -> DatasetDict:
    """Windows of `max_length` tokens for next-token prediction, as the book's `GPTDatasetV1`.

    Documents (a `Dataset`, or a source that `tokenize_corpus` reads) are tokenized (`tokenize_corpus`) and
    joined with `<|endoftext|>` into one stream, in a random order of documents when `seed` is given (the tokens
    are cached whatever the seed). The last `validation_fraction` of the stream is held out,
    so no window straddles the two splits. Windows start at 0, stride, 2*stride, ... of each split
    and hold exactly `max_length` tokens (a short tail is dropped); `stride == max_length` (the
    default) means no overlap. Rows read as `input_ids` and `labels` (equal: the model shifts), sliced
    from the token stream when they are read (`windows_of`).
    """
    stride = _window_stride(max_length, stride)
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} is invalid: it must be in [0, 1).")
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError("The corpus has no documents.")
    tokens = tokenize_corpus(dataset, tokenizer, num_proc, token_dtype, text_column)
    stream = TokenStream(tokens if seed is None else _shuffled(tokens, seed))
    total = len(stream)
    validation_tokens = int(total * validation_fraction)
    splits = {"train": (0, total - validation_tokens, stride)}
    if validation_fraction > 0:
        splits["validation"] = (total - validation_tokens, total, max_length)  # each token scored once
    for split, (start, end, _) in splits.items():
        if end - start < max_length:
            raise ValueError(
                f"The {split} split has {end - start} tokens, fewer than one window of max_length={max_length}: "
                "use more text, a smaller max_length or a smaller validation_fraction."
            )
    return DatasetDict({split: windows_of(stream, *bounds, max_length, split_stride)
                        for split, (*bounds, split_stride) in splits.items()})


class StreamedWindows(torch.utils.data.IterableDataset):
    """Training windows cut on the fly from a stream of tokenized documents, with the book's stride semantics
    across documents (a carry-over buffer), resumable where a checkpoint left off.

    `state_dict(consumed)` says how to go on after the first `consumed` windows: the documents stream's own
    `state_dict()` (datasets) after the document that completed a window at or before that point, the tokens
    carried over, and how many windows to pass over. The DataLoader reads ahead of training, so the last
    `keep` of these snapshots are kept. Windows are counted across passes over the stream.
    """

    def __init__(self, documents: IterableDataset, max_length: int, stride: int, keep: int = 4096):
        self.documents, self.max_length, self.stride = documents, max_length, stride
        self._resume = None
        self._emitted = 0  # windows of the passes before this one
        self._snapshots = collections.deque([self._start_of_pass()], maxlen=keep)

    def _start_of_pass(self) -> dict:
        return {"emitted": self._emitted, "documents": None, "buffer": [], "position": 0, "pass_over": 0}

    def __iter__(self):
        state, self._resume = self._resume or self._start_of_pass(), None
        documents = copy.deepcopy(self.documents)  # a state loaded into it would also restart later passes
        if state["documents"] is not None:
            documents.load_state_dict(state["documents"])
        emitted, position, pass_over = state["emitted"], state["position"], state["pass_over"]
        buffer = np.asarray(state["buffer"], dtype=np.int64)
        self._snapshots = collections.deque([{**state, "pass_over": 0, "emitted": emitted}],
                                            maxlen=self._snapshots.maxlen)
        seen = 0
        for document in documents:
            seen += 1
            buffer = np.concatenate([buffer, document["input_ids"]])
            if position + self.max_length > len(buffer):
                continue
            self._snapshots.append({"emitted": emitted, "documents": documents.state_dict(),
                                    "buffer": buffer.tolist(), "position": position, "pass_over": 0})
            while position + self.max_length <= len(buffer):
                window = buffer[position : position + self.max_length].tolist()
                position += self.stride
                emitted += 1
                if pass_over:
                    pass_over -= 1
                    continue
                self._emitted = emitted
                yield {"input_ids": window, "labels": window}
            dropped = min(position, len(buffer))
            buffer, position = buffer[dropped:], position - dropped
        if emitted == 0:
            raise ValueError(f"The streamed corpus ended after {seen} document(s) ({len(buffer)} tokens) without "
                             f"one window of max_length={self.max_length}: stream more text or use a smaller "
                             "max_length.")
        self._emitted = emitted

    def state_dict(self, consumed: int) -> dict:
        """Where to go on after the first `consumed` windows (counted from the start of training)."""
        usable = [s for s in self._snapshots if s["emitted"] <= consumed]
        if not usable:
            raise RuntimeError(f"No record of the stream at window {consumed}: the DataLoader read further ahead "
                               f"than the {self._snapshots.maxlen} windows kept.")
        return {**usable[-1], "pass_over": consumed - usable[-1]["emitted"]}

    def load_state_dict(self, state: dict) -> None:
        """Go on from `state` (of `state_dict`) when next iterated."""
        self._resume = state


def stream_lm_dataset(
    corpus: IterableDataset, tokenizer, max_length: int, stride: int | None = None,
    validation_documents: int = 100,
    rank: int = 0,
    world_size: int = 1,
    token_dtype: str | None = None,
) -> tuple[StreamedWindows, Dataset | None]:
    """Training windows streamed from `corpus` (`load_corpus(..., streaming=True)`), and validation windows.

    The first `validation_documents` documents of the stream are held out (read once, tokenized and cut into
    non-overlapping windows); training passes over them wherever they appear (matched by content), so the two
    never share a document. Each of `world_size` processes reads its own part of the stream
    (`split_dataset_by_node`: whole shards when their number divides among the processes, else every
    `world_size`-th document) and cuts its documents as `build_lm_dataset` cuts the whole corpus.
    """
    stride = _window_stride(max_length, stride)
    if not isinstance(validation_documents, int) or validation_documents < 0:
        raise ValueError(f"validation_documents={validation_documents!r} is invalid: give a count of documents.")
    encode = _DocumentTokens(tokenizer, storage_dtype(tokenizer, token_dtype).name)
    validation = None
    if validation_documents:
        texts = [row["text"] for row in corpus.take(validation_documents)]
        held_out = {_digest(text) for text in texts}
        stream = TokenStream(tokenize_corpus(Dataset.from_dict({"text": texts}), tokenizer, dtype=token_dtype))
        if len(stream) < max_length:
            raise ValueError(f"The validation split (the first {len(texts)} streamed documents) has {len(stream)} "
                             f"tokens, fewer than one window of max_length={max_length}: hold out more documents "
                             "(validation_documents) or use a smaller max_length.")
        validation = windows_of(stream, 0, len(stream), max_length, max_length)
        corpus = corpus.filter(lambda batch: [_digest(t) not in held_out for t in batch["text"]], batched=True)
    if world_size > 1:
        corpus = split_dataset_by_node(corpus, rank=rank, world_size=world_size)
    documents = corpus.with_format("arrow").map(encode, batched=True, remove_columns=["text"]).with_format("numpy")
    return StreamedWindows(documents, max_length, stride), validation


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
