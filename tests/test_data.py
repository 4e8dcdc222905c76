import json

import pytest
from datasets import Dataset

from hf_scratch_gpt.data import build_lm_dataset, load_corpus
from hf_scratch_gpt.tokenization import END_OF_TEXT, train_tokenizer

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
    assert train["input_ids"] == [stream[i : i + 4] for i in range(0, 27 - 4 + 1, 2)]
    assert [decode(chars, w) for w in train["input_ids"][:2]] == ["abcd", "cdef"]
    assert train["labels"] == train["input_ids"]  # the model shifts


def test_stride_equal_to_length_means_no_overlap_and_short_tail_dropped(chars):
    corpus = Dataset.from_dict({"text": [ALPHABET]})
    train = build_lm_dataset(corpus, chars, max_length=5, validation_fraction=0.0)["train"]
    flat = [t for w in train["input_ids"] for t in w]
    assert len(train) == 27 // 5
    assert decode(chars, flat) == ALPHABET[:25]  # no overlap, the 2-token tail is dropped


def test_documents_are_joined_with_end_of_text(chars):
    corpus = Dataset.from_dict({"text": ["abc", "de"]})
    train = build_lm_dataset(corpus, chars, max_length=7, validation_fraction=0.0)["train"]
    assert train["input_ids"] == [chars("abc" + END_OF_TEXT + "de" + END_OF_TEXT).input_ids]


def test_validation_is_the_end_of_the_stream_in_non_overlapping_windows(chars):
    corpus = Dataset.from_dict({"text": [ALPHABET * 4]})  # 105 tokens with the end-of-text
    data = build_lm_dataset(corpus, chars, max_length=4, stride=1, validation_fraction=0.2)
    validation = data["validation"]["input_ids"]
    assert len(validation) == 21 // 4  # the last 21 tokens, cut without overlap
    assert decode(chars, validation[0]) == (ALPHABET * 4)[84:88]
    train_tokens = len(data["train"]) + 4 - 1  # stride 1
    assert train_tokens == 105 - 21


def test_shuffle_seed_is_deterministic(chars):
    corpus = Dataset.from_dict({"text": [letter * 3 for letter in ALPHABET]})

    def order(seed):
        return build_lm_dataset(corpus, chars, max_length=4, validation_fraction=0.25, seed=seed)

    assert order(1)["train"]["input_ids"] == order(1)["train"]["input_ids"]
    assert order(1)["validation"]["input_ids"] == order(1)["validation"]["input_ids"]
    assert order(1)["train"]["input_ids"] != order(2)["train"]["input_ids"]
    unshuffled = order(None)["train"]["input_ids"][0]
    assert decode(chars, unshuffled) == "aaa" + END_OF_TEXT


def test_file_corpora_are_cached_by_fingerprint(tmp_path, chars):
    (tmp_path / "c.txt").write_text(ALPHABET * 10, encoding="utf-8")
    first = build_lm_dataset(load_corpus(tmp_path / "c.txt"), chars, max_length=8)
    again = build_lm_dataset(load_corpus(tmp_path / "c.txt"), chars, max_length=8)
    assert first["train"].cache_files and first["train"].cache_files == again["train"].cache_files


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_length=0), "max_length=0 is invalid"),
        (dict(max_length=4, stride=0), "stride=0 is invalid"),
        (dict(max_length=4, stride=-2), "stride=-2 is invalid"),
        (dict(max_length=4, validation_fraction=1.0), "validation_fraction=1.0"),
        (dict(max_length=64, validation_fraction=0.0), "train split has 27 tokens, fewer than one window of max_length=64"),
        (dict(max_length=4, validation_fraction=0.1), "validation split has 2 tokens"),
    ],
)
def test_windowing_bad_input(chars, options, message):
    with pytest.raises(ValueError, match=message):
        build_lm_dataset(Dataset.from_dict({"text": [ALPHABET]}), chars, **options)
