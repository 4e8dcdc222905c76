"""Tokenizers: byte-level BPE, characters and GPT-2's released files, as `PreTrainedTokenizerFast`."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, GPT2TokenizerFast

from hf_scratch_gpt.tokenization import END_OF_TEXT, UNKNOWN, gpt2_tokenizer, train_tokenizer

CORPUS = ["The verdict was that he had no talent. " * 20, "Every effort moves you forward, said Gisburn. " * 20]
SHARED_GPT2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer"


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(CORPUS, kind="bpe", vocab_size=320)


def test_bpe_learns_merges_and_special_tokens(bpe, tmp_path):
    assert 257 < len(bpe) <= 320
    assert bpe.eos_token == bpe.pad_token == END_OF_TEXT
    assert bpe.convert_tokens_to_ids(END_OF_TEXT) == bpe.eos_token_id == 0
    ids = bpe("The verdict" + END_OF_TEXT).input_ids
    assert ids[-1] == bpe.eos_token_id and len(ids) < len("The verdict") + 1  # merges shortened it
    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Every effort moves you").input_ids == bpe("Every effort moves you").input_ids
    assert loaded.eos_token_id == bpe.eos_token_id


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_byte_level_bpe_round_trips_any_text(bpe, text):
    ids = bpe(text).input_ids
    assert all(0 <= i < len(bpe) for i in ids)
    assert bpe.decode(ids) == text


def test_char_tokenizer_ids_and_unknowns(tmp_path):
    tokenizer = train_tokenizer(["abca", "cab\n"], kind="char")
    vocab = tokenizer.get_vocab()
    assert vocab[END_OF_TEXT] == 0 and vocab[UNKNOWN] == 1
    assert set(vocab) == {END_OF_TEXT, UNKNOWN, "a", "b", "c", "\n"}
    ids = tokenizer("cab\nz").input_ids
    assert ids == [vocab["c"], vocab["a"], vocab["b"], vocab["\n"], vocab[UNKNOWN]]
    assert tokenizer.decode(tokenizer("abc\nba").input_ids) == "abc\nba"
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("cab").input_ids == ids[:3]


def test_train_from_files(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("xyz" * 10, encoding="utf-8")
    tokenizer = train_tokenizer([path], kind="char")
    assert set(tokenizer.get_vocab()) == {END_OF_TEXT, UNKNOWN, "x", "y", "z"}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tmp: train_tokenizer(["abc"], kind="wordpiece"), "kind 'wordpiece' is unknown"),
        (lambda tmp: train_tokenizer(["abc"], kind="bpe", vocab_size=100), "vocab_size=100 is too small"),
        (lambda tmp: train_tokenizer(["", "  "], kind="char"), "empty corpus"),
        (lambda tmp: train_tokenizer([tmp / "missing.txt"]), "Cannot read"),
        (lambda tmp: train_tokenizer([_binary(tmp)]), r"bad.txt is not UTF-8 text: byte 3 is 0xff"),
        (lambda tmp: gpt2_tokenizer(tmp / "nope.json", tmp / "nope.bpe"), "does not exist"),
    ],
)
def test_tokenizer_bad_input(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def _binary(tmp):
    path = tmp / "bad.txt"
    path.write_bytes(b"abc\xff\xfedef")
    return path


@pytest.fixture(scope="module")
def gpt2_style_files(tmp_path_factory):
    """A small vocabulary in GPT-2's release format: encoder.json + vocab.bpe (with its version line)."""
    folder = tmp_path_factory.mktemp("gpt2-files")
    trained = train_tokenizer(CORPUS, kind="bpe", vocab_size=300).backend_tokenizer
    model = json.loads(trained.to_str())["model"]
    (folder / "encoder.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def gpt2_pair(gpt2_style_files):
    """Ours from the release files, and transformers' own from the same files under its names."""
    return (
        gpt2_tokenizer(gpt2_style_files / "encoder.json", gpt2_style_files / "vocab.bpe"),
        GPT2TokenizerFast.from_pretrained(gpt2_style_files),
    )


@settings(max_examples=100, deadline=None)
@given(text=st.text(min_size=1))
def test_gpt2_tokenizer_ids_equal_transformers(gpt2_pair, text):
    ours, reference = gpt2_pair
    assert len(ours) == len(reference) > 257
    assert ours(text).input_ids == reference(text).input_ids
    assert ours.decode(ours(text).input_ids) == text


def test_gpt2_tokenizer_rejects_a_non_json_vocabulary(tmp_path, gpt2_style_files):
    (tmp_path / "encoder.json").write_text("not json")
    with pytest.raises(ValueError, match="not a JSON vocabulary"):
        gpt2_tokenizer(tmp_path / "encoder.json", gpt2_style_files / "vocab.bpe")


@pytest.mark.skipif(not SHARED_GPT2.is_dir(), reason="OpenAI's GPT-2 files are not beside the repository")
def test_real_gpt2_files():
    tokenizer = gpt2_tokenizer(SHARED_GPT2 / "encoder.json", SHARED_GPT2 / "vocab.bpe")
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    assert tokenizer("Hello, world").input_ids == [15496, 11, 995]
