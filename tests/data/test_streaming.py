"""Streamed corpora: windows cut on the fly with the book's semantics, held-out validation, each process its own
part of the stream, and a resumed run that goes on where the stream left off."""

import itertools
import json
import signal
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hf_scratch_gpt.cli import main
from hf_scratch_gpt.corpus import StreamedWindows, build_lm_dataset, load_corpus, stream_lm_dataset
from hf_scratch_gpt.tokenization import train_tokenizer

from support import KILLED_RUN

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
DOCUMENTS = ["".join(ALPHABET[(i + j) % 26] for j in range(i % 9 + 1)) for i in range(60)]


@pytest.fixture(scope="module")
def chars():
    return train_tokenizer([ALPHABET], kind="char")


def write_jsonl(path, documents, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(documents)))
    return path


@pytest.fixture
def stream_file(tmp_path):
    return write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)


@pytest.mark.parametrize("max_length, stride", [(4, 4), (4, 3), (5, 1), (4, 7), (50, 50)])
def test_streamed_windows_are_the_prepared_windows(stream_file, chars, max_length, stride):
    prepared = build_lm_dataset(load_corpus(stream_file), chars, max_length, stride, validation_fraction=0)["train"]
    streamed, validation = stream_lm_dataset(load_corpus(stream_file, streaming=True), chars, max_length, stride,
                                             validation_documents=0)
    assert validation is None
    windows = list(streamed)
    assert [w["input_ids"] for w in windows] == prepared[:]["input_ids"]
    assert all(w["labels"] == w["input_ids"] for w in windows)
    assert [w["input_ids"] for w in streamed] == prepared[:]["input_ids"]  # a second pass reads it all again


@pytest.mark.parametrize("consumed, read_ahead", [(0, 0), (1, 0), (7, 3), (12, 20), (40, 1)])
def test_a_stream_goes_on_after_the_windows_training_consumed(stream_file, chars, consumed, read_ahead):
    def windows():
        return stream_lm_dataset(load_corpus(stream_file, streaming=True), chars, 6, 4, validation_documents=0)[0]

    everything = [w["input_ids"] for w in windows()]
    first = windows()
    list(itertools.islice(first, consumed + read_ahead))  # the DataLoader reads ahead of what training used
    state = json.loads(json.dumps(first.state_dict(consumed)))  # saved as JSON with the checkpoint
    resumed = windows()
    resumed.load_state_dict(state)
    assert [w["input_ids"] for w in resumed] == everything[consumed:]
    assert [w["input_ids"] for w in resumed] == everything  # the next pass starts at the beginning


def test_validation_documents_are_held_out_of_training(tmp_path, chars):
    documents = [f"{ALPHABET[i % 26]}" * (3 + i % 5) + ALPHABET[(i + 13) % 26] * 2 for i in range(40)]
    documents[30] = documents[2]  # a repeat of a held-out document is held out too
    path = write_jsonl(tmp_path / "d.jsonl", documents)
    train, validation = stream_lm_dataset(load_corpus(path, streaming=True), chars, 4, validation_documents=5)
    held_out = chars("".join(d + "<|endoftext|>" for d in documents[:5])).input_ids
    assert validation[:]["input_ids"] == [held_out[i : i + 4] for i in range(0, len(held_out) - 3, 4)]
    rest = [d for i, d in enumerate(documents) if i >= 5 and i != 30]
    expected = chars("".join(d + "<|endoftext|>" for d in rest)).input_ids
    assert [w["input_ids"] for w in train] == [expected[i : i + 4] for i in range(0, len(expected) - 3, 4)]


@pytest.mark.parametrize("files", [1, 2])
def test_each_process_streams_its_own_documents(tmp_path, chars, files):
    paths = [write_jsonl(tmp_path / f"part{n}.jsonl", DOCUMENTS[n::files]) for n in range(files)]
    source = str(tmp_path / "part*.jsonl")
    per_rank = [stream_lm_dataset(load_corpus(source, streaming=True), chars, 3, validation_documents=0, rank=r,
                                  world_size=2)[0] for r in range(2)]
    # Two files: a file each (whole shards); one file: every other document.
    mine = [DOCUMENTS[r::2] if files == 1 else DOCUMENTS[r::files] for r in range(2)]
    for windows, documents in zip(per_rank, mine):
        expected = chars("".join(d + "<|endoftext|>" for d in documents)).input_ids
        assert [w["input_ids"] for w in windows] == [expected[i : i + 3] for i in range(0, len(expected) - 2, 3)]
    assert len(paths) == files


def test_bad_streams(tmp_path, chars):
    with pytest.raises(ValueError, match=r"has no 'text' column; its columns are \['body', 'id'\]"):
        load_corpus(write_jsonl(tmp_path / "body.jsonl", DOCUMENTS, field="body"), streaming=True)
    short = write_jsonl(tmp_path / "short.jsonl", ["ab", "cd", "e"])
    windows, _ = stream_lm_dataset(load_corpus(short, streaming=True), chars, 16, validation_documents=0)
    with pytest.raises(ValueError, match=r"ended after 3 document\(s\) \(8 tokens\) without one window of "
                                         "max_length=16"):
        list(windows)
    with pytest.raises(ValueError, match=r"the first 3 streamed documents\) has 8 tokens, fewer than one window"):
        stream_lm_dataset(load_corpus(short, streaming=True), chars, 16, validation_documents=10)
    far_ahead = StreamedWindows(stream_lm_dataset(load_corpus(short, streaming=True), chars, 2,
                                                  validation_documents=0)[0].documents, 2, 1, keep=2)
    list(far_ahead)
    with pytest.raises(RuntimeError, match="No record of the stream at window 1: the DataLoader read further ahead "
                                           "than the 2 windows kept"):
        far_ahead.state_dict(1)


def stream_args(data, tokenizer, output_dir) -> list[str]:
    return ["--data", str(data), "--streaming", "true", "--tokenizer_name_or_path", str(tokenizer),
            "--validation_documents", "10", "--output_dir", str(output_dir), "--context_length", "32",
            "--emb_dim", "32", "--n_heads", "2", "--n_layers", "2", "--max_length", "32", "--stride", "16",
            "--max_steps", "16", "--per_device_train_batch_size", "4", "--eval_steps", "8", "--save_steps", "8",
            "--logging_steps", "4", "--seed", "7", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture
def streamed_run(tmp_path, chars):
    tokenizer = tmp_path / "tokenizer"
    chars.save_pretrained(tokenizer)
    documents = [f"Line {i}: every effort moves you, said the painter." for i in range(40)]
    return write_jsonl(tmp_path / "corpus.jsonl", documents), tokenizer


def test_pretrain_streams_and_resumes_where_the_stream_left_off(streamed_run, tmp_path, capsys):
    data, tokenizer = streamed_run
    assert main(["pretrain", *stream_args(data, tokenizer, tmp_path / "straight")]) == 0
    straight = tmp_path / "straight"
    history = json.loads((straight / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    assert all(0 <= e["data_wait_share"] < 1 for e in history if "loss" in e)
    assert json.loads((straight / "checkpoint-8" / "stream_state-0.json").read_text())["emitted"] <= 8 * 4
    card = (straight / "README.md").read_text()
    assert "streamed and cut on the fly" in card and "first documents of the stream" in card

    halted = tmp_path / "halted"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, "12", *stream_args(data, tokenizer, halted)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main(["pretrain", *stream_args(data, tokenizer, halted), "--resume_from_checkpoint", "last"]) == 0
    capsys.readouterr()
    # ~37 windows a pass: the 64 windows of 16 steps cross into the second pass, before and after the kill.
    straight_weights = load_file(straight / "model.safetensors")
    for name, tensor in load_file(halted / "model.safetensors").items():
        torch.testing.assert_close(tensor, straight_weights[name], atol=1e-5, rtol=0)
    losses = [[e["loss"] for e in json.loads((run / "checkpoint-16" / "trainer_state.json").read_text())[
        "log_history"] if "loss" in e] for run in (straight, halted)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--max_steps", "-1"], "--streaming needs --max_steps"),
    (["--shuffle_seed", "3"], "--shuffle_seed does not apply to --streaming"),
    (["--dataloader_num_workers", "2"], "leave --dataloader_num_workers at 0"),
    (["--validation_documents", "-1"], "--validation_documents=-1 is invalid"),
])
def test_streaming_bad_input(streamed_run, tmp_path, capsys, extra, message):
    data, tokenizer = streamed_run
    assert main(["pretrain", *stream_args(data, tokenizer, tmp_path / "out"), *extra]) in (1, 2)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_streaming_needs_a_tokenizer(streamed_run, tmp_path, capsys):
    data, _ = streamed_run
    args = stream_args(data, "x", tmp_path / "out")
    del args[args.index("--tokenizer_name_or_path") : args.index("--tokenizer_name_or_path") + 2]
    assert main(["pretrain", *args]) == 1
    assert "--streaming needs a tokenizer" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_resuming_a_streamed_run_needs_its_stream_state(streamed_run, tmp_path, capsys):
    data, tokenizer = streamed_run
    out = tmp_path / "out"
    args = stream_args(data, tokenizer, out)
    assert main(["pretrain", *args, "--max_steps", "8"]) == 0
    (out / "checkpoint-8" / "stream_state-0.json").unlink()
    assert main(["pretrain", *args, "--resume_from_checkpoint", str(out / "checkpoint-8")]) == 1
    assert "holds no stream_state-0.json" in capsys.readouterr().err


def test_python_docs_stream_too(chars):
    corpus = load_corpus(streaming=True)
    assert next(iter(corpus))["text"] == load_corpus()[0]["text"]
    assert isinstance(load_corpus(), Dataset)


def test_a_stream_too_short_for_one_window_fails_in_one_line(streamed_run, tmp_path, capsys):
    _, tokenizer = streamed_run
    short = write_jsonl(tmp_path / "short.jsonl", ["a few", "words"])
    args = stream_args(short, tokenizer, tmp_path / "out")
    args[args.index("--validation_documents") + 1] = "0"
    assert main(["pretrain", *args]) == 1
    err = capsys.readouterr().err
    assert "The streamed corpus ended after 2 document(s) (12 tokens) without one window of max_length=32" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_token_type_flag(streamed_run, tmp_path, capsys):
    data, tokenizer = streamed_run
    args = stream_args(data, tokenizer, tmp_path / "out")
    assert main(["pretrain", *args, "--token_dtype", "int8"]) == 2
    assert "int8" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_text_and_parquet_files_stream_too(tmp_path, chars):
    (tmp_path / "a.txt").write_text("abc", encoding="utf-8")
    (tmp_path / "b.txt").write_text("de\nf", encoding="utf-8")
    assert [row["text"] for row in load_corpus(tmp_path, streaming=True)] == ["abc", "de\nf"]  # a file a document
    Dataset.from_dict({"body": ["xy", "z"], "n": [1, 2]}).to_parquet(tmp_path / "t.parquet")
    streamed = load_corpus(tmp_path / "t.parquet", text_column="body", streaming=True)
    assert [row for row in streamed] == [{"text": "xy"}, {"text": "z"}]
