"""Labelled, instruction and preference data: loading from every format, splits, and their errors."""

import copy
import itertools
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import transformers
from datasets import Dataset, concatenate_datasets
from transformers.testing_utils import CaptureLogger

from hf_scratch_gpt import corpus as corpus_module
from hf_scratch_gpt.corpus import (
    TokenStream,
    _page_out,
    _shuffled,
    build_lm_dataset,
    load_corpus,
    storage_dtype,
    tokenize_corpus,
)
from hf_scratch_gpt.tokenization import (
    END_OF_TEXT,
    _character_lookup,
    _tiktoken_gpt2,
    batch_encoder,
    gpt2_tokenizer,
    starts_words_at_line_breaks,
    train_tokenizer,
)

GPT2_FILES = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer"

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def chars():
    """One token per letter, so token positions are character positions."""
    return train_tokenizer([ALPHABET], kind="char")


def decode(tokenizer, ids):
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def test_python_docs_is_the_offline_default():
    corpus = load_corpus()
    assert corpus.column_names == ["text"] and len(corpus) > 50
    assert sum(len(t) for t in corpus["text"]) > 400_000


def test_text_files_folders_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nwith two lines", encoding="utf-8")
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    assert load_corpus(tmp_path / "a.txt")["text"] == ["first document\nwith two lines"]
    assert sorted(load_corpus(tmp_path)["text"]) == ["first document\nwith two lines", "second"]
    assert load_corpus(str(tmp_path / "b*.txt"))["text"] == ["second"]


def test_structured_files_with_a_named_text_column(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate("xy")))
    corpus = load_corpus(tmp_path / "d.jsonl", text_column="body")
    assert corpus.column_names == ["text"] and corpus["text"] == ["x", "y"]
    (tmp_path / "e.csv").write_text("text,label\nhello,1\nworld,0\n")
    assert load_corpus(tmp_path / "e.csv")["text"] == ["hello", "world"]
    (tmp_path / "f.tsv").write_text('Label\tSMS\nham\t"quoted, as typed\nspam\tNA\n')
    assert load_corpus(tmp_path / "f.tsv", text_column="SMS")["text"] == ['"quoted, as typed', "NA"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: _write(p / "empty.txt", b""), "is empty"),
        (lambda p: _write(p / "blank.txt", b"  \n\n"), "is empty"),
        (lambda p: _write(p / "latin1.txt", "caf\u00e9".encode("latin-1")), r"latin1.txt is not UTF-8 text: byte 3"),
        (lambda p: _write(p / "d.jsonl", b'{"body": "x"}\n'), "no 'text' column; its columns are \\['body'\\]"),
        (lambda p: _write(p / "f.pdf", b"%PDF"), "types \\['.pdf'\\]"),
        (lambda p: str(p / "*.nothing"), "matches no files"),
        (lambda p: (p / "sub").mkdir() or p / "sub", "holds no files"),
    ],
)
def test_corpus_bad_input(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(make(tmp_path))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_windows_follow_gpt_dataset_v1(chars):
    corpus = Dataset.from_dict({"text": [ALPHABET]})
    train = build_lm_dataset(corpus, chars, max_length=4, stride=2, validation_fraction=0.0)["train"]
    stream = chars(ALPHABET + END_OF_TEXT).input_ids  # documents end with <|endoftext|>: 27 tokens
    assert len(stream) == 27
    assert train[:]["input_ids"] == [stream[i : i + 4] for i in range(0, 27 - 4 + 1, 2)]
    assert [decode(chars, w) for w in train[:]["input_ids"][:2]] == ["abcd", "cdef"]
    assert train[:]["labels"] == train[:]["input_ids"]  # the model shifts


def test_stride_equal_to_length_means_no_overlap_and_short_tail_dropped(chars):
    corpus = Dataset.from_dict({"text": [ALPHABET]})
    train = build_lm_dataset(corpus, chars, max_length=5, validation_fraction=0.0)["train"]
    flat = [t for w in train[:]["input_ids"] for t in w]
    assert len(train) == 27 // 5
    assert decode(chars, flat) == ALPHABET[:25]  # no overlap, the 2-token tail is dropped


def test_documents_are_joined_with_end_of_text(chars):
    corpus = Dataset.from_dict({"text": ["abc", "de"]})
    train = build_lm_dataset(corpus, chars, max_length=7, validation_fraction=0.0)["train"]
    assert train[:]["input_ids"] == [chars("abc" + END_OF_TEXT + "de" + END_OF_TEXT).input_ids]


def test_validation_is_the_end_of_the_stream_in_non_overlapping_windows(chars):
    corpus = Dataset.from_dict({"text": [ALPHABET * 4]})  # 105 tokens with the end-of-text
    data = build_lm_dataset(corpus, chars, max_length=4, stride=1, validation_fraction=0.2)
    validation = data["validation"][:]["input_ids"]
    assert len(validation) == 21 // 4  # the last 21 tokens, cut without overlap
    assert decode(chars, validation[0]) == (ALPHABET * 4)[84:88]
    train_tokens = len(data["train"]) + 4 - 1  # stride 1
    assert train_tokens == 105 - 21


def test_shuffle_seed_is_deterministic(chars):
    corpus = Dataset.from_dict({"text": [letter * 3 for letter in ALPHABET]})

    def order(seed):
        return build_lm_dataset(corpus, chars, max_length=4, validation_fraction=0.25, seed=seed)

    assert order(1)["train"][:]["input_ids"] == order(1)["train"][:]["input_ids"]
    assert order(1)["validation"][:]["input_ids"] == order(1)["validation"][:]["input_ids"]
    assert order(1)["train"][:]["input_ids"] != order(2)["train"][:]["input_ids"]
    unshuffled = order(None)["train"][:]["input_ids"][0]
    assert decode(chars, unshuffled) == "aaa" + END_OF_TEXT


def test_tokens_are_stored_once_as_uint16_in_the_cache(tmp_path, chars):
    (tmp_path / "c.txt").write_text(ALPHABET * 10, encoding="utf-8")
    first = tokenize_corpus(load_corpus(tmp_path / "c.txt"), chars)
    again = tokenize_corpus(load_corpus(tmp_path / "c.txt"), chars)
    assert first.cache_files and first.cache_files == again.cache_files  # the second run reads the first's tokens
    assert first.data.column("input_ids").type.value_type == pa.uint16()
    assert first[0]["input_ids"] == chars(ALPHABET * 10 + END_OF_TEXT).input_ids
    windows = build_lm_dataset(load_corpus(tmp_path / "c.txt"), chars, max_length=8)["train"]
    assert windows.column_names == ["start"] and windows[:2]["input_ids"] == [first[0]["input_ids"][i:i + 8]
                                                                              for i in (0, 8)]


def test_storage_type_is_the_smallest_that_holds_the_vocabulary(chars):
    class Big:
        def __len__(self):
            return 70_000

    assert storage_dtype(chars) == np.uint16 and storage_dtype(Big()) == np.uint32
    assert storage_dtype(chars, "uint32") == np.uint32
    message = "has 70000 tokens, and uint16 holds ids up to 65535: use token_dtype='uint32'"
    with pytest.raises(ValueError, match=message):
        storage_dtype(Big(), "uint16")
    with pytest.raises(ValueError, match="token_dtype='int8' is invalid"):
        storage_dtype(chars, "int8")


def test_the_token_stream_reads_across_record_batches_in_place(tmp_path, chars):
    texts = ["".join(ALPHABET[(i + j) % 26] for j in range(i % 7 + 1)) for i in range(40)]
    pieces = [tokenize_corpus(Dataset.from_dict({"text": texts[i : i + 10]}), chars) for i in range(0, 40, 10)]
    tokens = concatenate_datasets(pieces)
    flat = [t for row in tokens["input_ids"] for t in row]
    stream = TokenStream(tokens)
    assert len(stream._pieces[0]) == 4 and len(stream) == len(flat)
    for start, stop in [(0, 5), (3, 60), (len(pieces[0][:]["input_ids"][0]), 90), (0, len(flat)), (95, 10_000)]:
        assert stream[start:stop].tolist() == flat[start:stop]
    on_disk = TokenStream(tokenize_corpus(load_corpus(_write(tmp_path / "d.txt", ALPHABET.encode() * 100)), chars))
    assert not on_disk._pieces[0][0].flags.owndata  # a view of the memory-mapped cache, not a copy
    assert len(pickle.dumps(on_disk)) < 2_000 < len(on_disk) * 2  # pickles as the cache's path, not its tokens
    assert pickle.loads(pickle.dumps(on_disk))[10:20].tolist() == on_disk[10:20].tolist()


@pytest.mark.skipif(not GPT2_FILES.is_dir(), reason="needs ../shared/data/gpt2-tokenizer")
def test_gpt2_is_tokenized_by_tiktoken_to_the_same_ids():
    gpt2 = gpt2_tokenizer(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
    assert _tiktoken_gpt2(gpt2) is not None
    texts = ["Every effort moves you.\n\n  Indented,\ttabbed; 'quoted' it's", "caf\u00e9 \U0001f600 \u4e2d\u6587",
             "", " ", "end<|endoftext|>next", "\n\n\n", "x" * 5000, "12345 67.8e9 $%^&"]
    assert [ids.tolist() for ids in batch_encoder(gpt2)(texts)] == gpt2(texts, add_special_tokens=False)["input_ids"]


def test_other_tokenizers_keep_their_own_encoding(chars):
    assert _tiktoken_gpt2(chars) is None
    assert [ids.tolist() for ids in batch_encoder(chars)(["abc", "zz"])] == chars(["abc", "zz"]).input_ids


def test_a_character_tokenizer_is_read_by_code_point(chars):
    """The lookup table gives the tokenizer's ids: unknown characters (beyond the table too), an added token
    written in the text (matched whole by the tokenizer), nothing at all."""
    texts = ["abc", "", "zz top!", "caf\u00e9 \U0001f600\n\tx", f"ab{END_OF_TEXT}c<|unk|>d", ALPHABET * 200]
    assert [ids.tolist() for ids in batch_encoder(chars)(texts)] == chars(texts, add_special_tokens=False).input_ids
    assert _character_lookup(chars) is not None and _character_lookup(train_tokenizer([ALPHABET], "bpe", 300)) is None


def test_encoding_documents_longer_than_the_context_warns_nothing(chars):
    """A corpus's documents are longer than the model's context by nature (they are cut into windows): the
    tokenizer's "will result in indexing errors" warning would be wrong."""
    short = copy.deepcopy(chars)
    short.model_max_length = 8
    with CaptureLogger(transformers.tokenization_utils_base.logger) as captured:
        assert len(batch_encoder(short)([ALPHABET])[0]) == 26
    assert captured.out == ""


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_length=0), "max_length=0 is invalid"),
        (dict(max_length=4, stride=0), "stride=0 is invalid"),
        (dict(max_length=4, stride=-2), "stride=-2 is invalid"),
        (dict(max_length=4, validation_fraction=1.0), "validation_fraction=1.0"),
        (dict(max_length=64, validation_fraction=0.0),
         "train split has 27 tokens, fewer than one window of max_length=64"),
        (dict(max_length=4, validation_fraction=0.1), "validation split has 2 tokens"),
    ],
)
def test_windowing_bad_input(chars, options, message):
    with pytest.raises(ValueError, match=message):
        build_lm_dataset(Dataset.from_dict({"text": [ALPHABET]}), chars, **options)


def _rss_file_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:"))) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="madvise(MADV_PAGEOUT) is Linux's")
def test_tokenized_text_is_handed_back_to_the_kernel_unchanged(tmp_path):
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": f"{i:06d} " + "x" * 4000}) + "\n"
                                                for i in range(8000)))
    text = load_corpus(tmp_path / "big.jsonl").data.column("text")  # 32 MB, memory-mapped from datasets' cache
    os.sync()  # written by this process: the kernel hands back a file's pages once they are written out
    before = _rss_file_mb()
    assert sum(len(b.to_pybytes()) for chunk in text.chunks for b in chunk.buffers() if b) > 32e6  # read it all
    assert _rss_file_mb() > before + 25
    _page_out(text)
    assert _rss_file_mb() < before + 5
    assert text[7999].as_py() == "007999 " + "x" * 4000  # read again from the file
    in_memory = pa.chunked_array([pa.array(["y" * 100_000] * 50)])
    _page_out(in_memory)  # not a file's pages: left as they are
    assert in_memory[49].as_py() == "y" * 100_000


# A text with every kind of line end a cut must respect: runs of blank lines, lines ending in spaces or tabs,
# characters of several UTF-8 lengths before a line break, CRLF, and a line with no break in sight.
AWKWARD_TEXT = "".join(
    f"Line {i}: every effort moves you.\n\n\n  indented{i}   \n\tcafé {i}\n日本語の行{i}\r\nend!\n" + "x" * (i % 7) * 40
    for i in range(60))


@pytest.fixture
def small_pieces(monkeypatch):
    """Files past 256 bytes are read in pieces of about that size, and corpora past 1 kB by every core."""
    monkeypatch.setattr(corpus_module, "PIECE_BYTES", 256)
    monkeypatch.setattr(corpus_module, "_BIG_CORPUS", 1024)


def whole_file_ids(tokenizer, *texts) -> list[int]:
    return [i for text in texts for i in [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]]


def piece_tokenizers() -> dict:
    found = {"bpe": train_tokenizer([AWKWARD_TEXT], kind="bpe", vocab_size=400),
             "char": train_tokenizer([AWKWARD_TEXT], kind="char")}
    if GPT2_FILES.is_dir():  # tiktoken's encoder of GPT-2's BPE
        found["gpt2"] = gpt2_tokenizer(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
    return found


@pytest.mark.parametrize("kind", ["bpe", "char", "gpt2"])
def test_a_big_text_file_is_read_in_pieces_that_encode_as_the_whole(tmp_path, small_pieces, kind):
    tokenizer = piece_tokenizers().get(kind) or pytest.skip("needs ../shared/data/gpt2-tokenizer")
    path = tmp_path / "big.txt"
    path.write_bytes(AWKWARD_TEXT.encode())
    corpus = load_corpus(path)
    assert len(corpus) > 20 and corpus["document_end"] == [False] * (len(corpus) - 1) + [True]
    assert "".join(corpus["text"]) == AWKWARD_TEXT  # every byte, in order; pieces of about the size asked
    assert max(len(text.encode()) for text in corpus["text"]) < 256 + 300
    assert starts_words_at_line_breaks(tokenizer)
    stream = TokenStream(tokenize_corpus(corpus, tokenizer, num_proc=2))
    assert stream[:].tolist() == whole_file_ids(tokenizer, AWKWARD_TEXT)
    (tmp_path / "small.txt").write_text("A small second document.\n")
    in_place = tokenize_corpus(tmp_path, tokenizer)  # tokenized where it lies, by every core
    assert len(in_place.cache_files) == 2 and in_place.column_names == ["input_ids", "document_end"]
    assert in_place["document_end"] == [*corpus["document_end"], True]
    assert TokenStream(in_place)[:].tolist() == whole_file_ids(tokenizer, AWKWARD_TEXT, "A small second document.\n")


def test_a_text_piece_ends_at_the_first_line_break_after_a_printable_character(tmp_path):
    data = b"ab\n\n \n\xc3\xa9\nx \ncd\nef\n\r\n"  # 20 bytes; a cut only before the line breaks at 2, 14, 17
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    expected = [0, 2, 2, *[14] * 12, 17, 17, 17, 20, 20, 20]
    with open(path, "rb") as file:
        for block in (2, 3, 64):  # a match across the blocks read, or inside one
            assert [corpus_module._next_cut(file, offset, block) for offset in range(21)] == expected


def test_a_tokenizer_that_could_split_differently_gets_the_documents_whole(tmp_path, small_pieces):
    from tokenizers import normalizers

    tokenizer = train_tokenizer([AWKWARD_TEXT], kind="bpe", vocab_size=400)
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()  # no longer GPT-2's: not trusted with pieces
    assert not starts_words_at_line_breaks(tokenizer)
    (tmp_path / "a.txt").write_text(AWKWARD_TEXT)
    (tmp_path / "b.txt").write_text("A small second document.\n")
    for corpus in (load_corpus(tmp_path), tmp_path):  # a source too is loaded whole for such a tokenizer
        stream = TokenStream(tokenize_corpus(corpus, tokenizer))
        assert stream[:].tolist() == whole_file_ids(tokenizer, AWKWARD_TEXT, "A small second document.\n")


def test_a_big_text_file_that_is_not_utf8_is_named_when_tokenized_where_it_lies(tmp_path, small_pieces, chars):
    path = tmp_path / "big.txt"
    path.write_bytes(AWKWARD_TEXT.encode() + b"caf\xe9\n" + AWKWARD_TEXT.encode())
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text: byte {len(AWKWARD_TEXT.encode()) + 3} is 0xe9"):
        tokenize_corpus(path, chars)


def test_shuffling_keeps_a_document_read_in_pieces_whole(tmp_path, small_pieces):
    texts = [AWKWARD_TEXT, "short b\n", AWKWARD_TEXT.upper(), "short d\n"]
    for name, text in zip("abcd", texts):
        (tmp_path / f"{name}.txt").write_text(text)
    corpus = load_corpus(tmp_path)
    every_order = {"".join(order): order for order in itertools.permutations(texts)}
    orders = {every_order["".join(_shuffled(corpus, seed)["text"])] for seed in range(6)}  # each document whole
    assert len(orders) > 1  # and the documents do move
    tokenizer = train_tokenizer(texts, kind="char")
    for seed in range(3):  # tokenized where they lie, then shuffled: the stream of the texts shuffled first
        shuffled_first = TokenStream(tokenize_corpus(_shuffled(corpus, seed), tokenizer))[:].tolist()
        windows = build_lm_dataset(tmp_path, tokenizer, 16, seed=seed, validation_fraction=0)["train"][:]["input_ids"]
        assert windows == [shuffled_first[i : i + 16] for i in range(0, len(shuffled_first) - 15, 16)]


def _json_lines(records) -> str:
    return "".join((json.dumps(r, ensure_ascii=i % 2 == 0) if not isinstance(r, str) else r) + "\n"
                   for i, r in enumerate(records))


def test_a_big_json_lines_file_is_read_in_byte_ranges_record_by_record(tmp_path, small_pieces):
    # Records of every length around the 256-byte ranges, escaped line breaks and non-ASCII text (both escaped
    # and as UTF-8), blank lines, another column; two files, read in order.
    records = [{"id": i, "body": f"doc {i}: café 日本\n" * (i % 9) + "x" * (i * 37 % 300)} for i in range(120)]
    (tmp_path / "a.jsonl").write_text(_json_lines(records[:70]) + "\n  \n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(_json_lines(records[70:]), encoding="utf-8")
    corpus = load_corpus(tmp_path, text_column="body")
    assert len(corpus.cache_files) == 2  # written by two processes
    assert corpus.column_names == ["text"] and corpus["text"] == [r["body"] for r in records]
    assert load_corpus(tmp_path, text_column="body").cache_files == corpus.cache_files  # read back, not again


def test_json_lines_are_tokenized_where_they_lie_to_the_ids_of_their_texts(tmp_path, small_pieces, chars):
    # Documents never copied into Arrow; the same stream as loading them first, shuffled or not, and on every core.
    records = [{"body": ALPHABET[i % 26 :] * (i % 11), "n": i} for i in range(150)] + ["", {"body": ""}]
    (tmp_path / "a.jsonl").write_text(_json_lines(records[:90]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(_json_lines(records[90:]), encoding="utf-8")
    in_place = tokenize_corpus(tmp_path, chars, text_column="body")
    assert len(in_place.cache_files) == 2 and in_place.column_names == ["input_ids"]
    assert in_place.features["input_ids"].feature.dtype == "uint16"
    eos = chars.eos_token_id
    assert in_place["input_ids"] == [[*chars(r["body"]).input_ids, eos] for r in records if r]
    for seed in (None, 3):
        loaded = build_lm_dataset(load_corpus(tmp_path, text_column="body"), chars, 8, seed=seed)
        windows = build_lm_dataset(tmp_path, chars, 8, seed=seed, text_column="body")
        assert windows["train"][:] == loaded["train"][:] and windows["validation"][:] == loaded["validation"][:]
    texts = load_corpus(tmp_path, text_column="body")
    shuffled_first = TokenStream(tokenize_corpus(_shuffled(texts, 3), chars))  # what a seed always meant
    assert build_lm_dataset(tmp_path, chars, 8, seed=3, validation_fraction=0,
                            text_column="body")["train"][0]["input_ids"] == shuffled_first[:8].tolist()


@pytest.mark.parametrize("line, problem", [
    ('{"text": "fine"', "line 3 is not JSON"),
    ('["a", "list"]', "line 3 is not a record \\(a JSON object\\) but list"),
    ('{"body": "x"}', "line 3 has no 'text' column; its columns are \\['body'\\]"),
    ('{"text": null}', "line 3 has None in its 'text' column, not text"),
])
def test_a_bad_line_of_a_big_json_lines_file_is_named(tmp_path, small_pieces, chars, line, problem):
    lines = [{"text": "first " * 60}, {"text": "second " * 60}, line, *[{"text": "more " * 60}] * 3]
    path = tmp_path / "big.jsonl"
    path.write_text(_json_lines(lines))
    with pytest.raises(ValueError, match=f"Corpus {path}: {problem}"):
        load_corpus(path)
    with pytest.raises(ValueError, match=f"Corpus {path}: {problem}"):  # from a worker process
        tokenize_corpus(path, chars)
