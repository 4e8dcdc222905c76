"""The bad-input sweep: every command and public function, given a user's likely mistakes, fails early with
one specific line (what is wrong, with which value, what to do) and writes nothing."""

import errno
import json
import shlex
import shutil
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, from_gpt2
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.corpus import build_lm_dataset, load_corpus
from hf_scratch_gpt.data import (
    InstructionCollator,
    build_classification_dataset,
    build_instruction_dataset,
    load_instructions,
    load_labelled,
    split_dataset,
)
from hf_scratch_gpt.loading import load_model, load_tokenizer
from hf_scratch_gpt.recipes import (
    ClassificationArguments,
    InstructionArguments,
    InstructionTrainingArguments,
    PretrainingArguments,
    classify,
    instruct,
    pretrain,
)
from hf_scratch_gpt.tokenization import gpt2_tokenizer, train_tokenizer

from support import INSTRUCTIONS, SMS

TINY = ("--tokenizer_kind char --context_length 32 --emb_dim 32 --n_heads 2 --n_layers 2 --max_steps 2 "
        "--disable_tqdm true")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A small model and data, and every kind of broken file the sweep feeds the commands."""
    root = tmp_path_factory.mktemp("world")
    paths = {name: root / name for name in ("model", "corpus", "sms", "instructions")}
    corpus = "".join(f"Line {i}: every effort moves you, said the painter.\n" for i in range(60))
    paths["corpus"] = root / "corpus.txt"
    paths["corpus"].write_text(corpus)
    paths["sms"] = root / "sms.tsv"
    rows = "".join(f"{label}\t{text} {i}\n" for i in range(6) for label, text in SMS)
    paths["sms"].write_text("label\ttext\n" + rows)
    paths["instructions"] = root / "instructions.json"
    paths["instructions"].write_text(json.dumps(INSTRUCTIONS * 4))

    tokenizer = train_tokenizer([corpus + paths["sms"].read_text() + paths["instructions"].read_text()], kind="char")
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=32, emb_dim=16, n_heads=2, n_layers=1,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ScratchGPTForCausalLM(config).save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])
    ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=10, context_length=32, emb_dim=16, n_heads=2,
                                           n_layers=1)).save_pretrained(root / "small_model")

    def broken_copy(name, edit):
        folder = root / name
        shutil.copytree(paths["model"], folder)
        edit(folder)

    weights = (paths["model"] / "model.safetensors").read_bytes()
    broken_copy("truncated", lambda f: (f / "model.safetensors").write_bytes(weights[: len(weights) // 2]))
    broken_copy("garbage_weights", lambda f: (f / "model.safetensors").write_bytes(b"\x00\x01garbage" * 50))
    broken_copy("config_not_json", lambda f: (f / "config.json").write_text("{not json"))
    broken_copy("config_a_list", lambda f: (f / "config.json").write_text("[1, 2]"))
    broken_copy("no_config", lambda f: (f / "config.json").unlink())
    broken_copy("bad_tokenizer", lambda f: (f / "tokenizer.json").write_text("garbage"))

    def edit_config(folder, drop=(), **changes):
        fields = json.loads((folder / "config.json").read_text())
        edited = {k: v for k, v in {**fields, **changes}.items() if k not in drop}
        (folder / "config.json").write_text(json.dumps(edited))

    broken_copy("config_wrong_type", lambda f: edit_config(f, n_heads="four"))
    broken_copy("config_bad_value", lambda f: edit_config(f, emb_dim=15))
    broken_copy("config_misspelt", lambda f: edit_config(f, n_layer=3, drop=["n_layers"]))  # in place of the field
    broken_copy("config_no_type", lambda f: edit_config(f, model_type=None))
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(root / "bert")
    foreign = root / "foreign"  # a folder whose model needs its own code: never run
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (foreign / "evil.py").write_text(f"open({str(root / 'ran')!r}, 'w').write('ran')\n")

    files = {
        "empty.txt": "",
        "spaces.txt": "  \n\n ",
        "short.txt": "tiny",
        "list_of_numbers.json": "[1, 2, 3]",
        "a_string.json": '"hello"',
        "broken.json": '{"instruction": "a",',
        "broken.jsonl": '{"instruction": "a", "output": "b"}\n{oops}\n',
        "broken_corpus.jsonl": '{"text": "a"}\n{oops}\n',
        "no_text_column.json": json.dumps([{"body": "hello"}] * 5),
        "missing_output.json": json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}] * 5),
        "no_instruction.json": json.dumps([{"prompt": "a", "output": "b"}] * 5),
        "one_class.tsv": "label\ttext\n" + "ham\thello\n" * 20,
        "no_label.tsv": "text\n" + "hello\n" * 20,
        "empty_label.tsv": "label\ttext\nham\thi\nspam\twin\n\tno label\n" * 5,
        "header_only.tsv": "label\ttext\n",
        "mixed.tsv": "label\ttext\n", "mixed.json": "[]",
        "a_file": "not a folder",
        "flags_a_list.yaml": "- max_steps\n- 2\n",
        "flags_unknown.yaml": "bogus: 1\n",
        "flags_broken.json": '{"max_steps": ',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "binary.txt").write_bytes(b"abc\x00\xff\xfe\x80")
    (root / "binary.tsv").write_bytes(b"label\ttext\nham\t\xff\xfe\n")
    (root / "mixed").mkdir()
    (root / "mixed" / "a.tsv").write_text("label\ttext\nham\thi\n")
    (root / "mixed" / "b.json").write_text("[]")
    ScratchGPTConfig(vocab_size=50, emb_dim=16, n_heads=2, n_layers=1).save_pretrained(root / "other_model_run")
    return {name: str(path) for name, path in paths.items()} | {"root": root}


# (id, command line with {placeholders} for the world's paths and {out} for a fresh output folder,
#  what the one line of error must say, exit status)
CLI_CASES = [
    # pretrain: the corpus
    ("corpus missing", "pretrain --data {root}/nowhere.txt", "Corpus {root}/nowhere.txt does not exist", 1),
    ("corpus empty", "pretrain --data {root}/empty.txt", "Corpus {root}/empty.txt is empty", 1),
    ("corpus blank", "pretrain --data {root}/spaces.txt", "Corpus {root}/spaces.txt is empty", 1),
    ("corpus binary", "pretrain --data {root}/binary.txt",
     "{root}/binary.txt is not UTF-8 text: byte 4 is 0xff; convert it to UTF-8", 1),
    ("corpus too short", "pretrain --data {root}/short.txt", "fewer than one window of max_length=32", 1),
    ("corpus json not records", "pretrain --data {root}/list_of_numbers.json",
     "{root}/list_of_numbers.json is not a list of records: record 1 is a JSON int", 1),
    ("corpus json broken", "pretrain --data {root}/broken.json", "{root}/broken.json is neither JSON nor JSON Lines",
     1),
    ("corpus no text column", "pretrain --data {root}/no_text_column.json", "has no 'text' column; its columns are "
     "['body']. Name the text column with text_column", 1),
    ("corpus JSON Lines broken", "pretrain --data {root}/broken_corpus.jsonl",
     "Corpus {root}/broken_corpus.jsonl: line 2 is not JSON", 1),
    ("corpus JSON Lines broken, tokenized in place", "pretrain --data {root}/broken_corpus.jsonl "
     "--tokenizer_name_or_path {model}", "Corpus {root}/broken_corpus.jsonl: line 2 is not JSON", 1),
    ("corpus mixed types", "pretrain --data {root}/mixed", "has files of types ['.json', '.tsv']", 1),
    ("corpus glob matches nothing", "pretrain --data {root}/*.nothing", "matches no files", 1),
    # pretrain: sizes and fractions
    ("validation fraction", "pretrain --data {corpus} --validation_fraction 1.5",
     "validation_fraction=1.5 is invalid: it must be in [0, 1)", 1),
    ("max_length above context", "pretrain --data {corpus} --max_length 64",
     "max_length=64 is longer than the model's context_length=32", 1),
    ("stride zero", "pretrain --data {corpus} --stride 0", "stride=0 is invalid", 1),
    ("max_length negative", "pretrain --data {corpus} --max_length -3", "max_length=-3 is invalid", 1),
    ("max_length zero", "pretrain --data {corpus} --max_length 0", "max_length=0 is invalid", 1),
    ("learning rate negative", "pretrain --data {corpus} --learning_rate -1",
     "--learning_rate=-1.0 is invalid: it must be positive", 2),
    ("learning rate zero", "pretrain --data {corpus} --learning_rate 0", "--learning_rate=0.0 is invalid", 2),
    ("batch size zero", "pretrain --data {corpus} --per_device_train_batch_size 0",
     "--per_device_train_batch_size=0 is invalid: it must be positive", 2),
    ("eval batch size negative", "pretrain --data {corpus} --per_device_eval_batch_size -2",
     "--per_device_eval_batch_size=-2 is invalid", 2),
    ("steps zero", "pretrain --data {corpus} --max_steps 0", "--max_steps=0 is invalid: give a positive number of "
     "steps, or -1 to train for --num_train_epochs", 2),
    ("accumulation zero", "pretrain --data {corpus} --gradient_accumulation_steps 0",
     "--gradient_accumulation_steps=0 is invalid", 2),
    ("save steps negative", "pretrain --data {corpus} --save_steps -1", "--save_steps=-1.0 is invalid", 2),
    ("warmup negative", "pretrain --data {corpus} --warmup_steps -1", "--warmup_steps=-1.0 is invalid", 2),
    ("weight decay negative", "pretrain --data {corpus} --weight_decay -0.1", "--weight_decay=-0.1 is invalid", 2),
    ("emb_dim negative", "pretrain --data {corpus} --emb_dim -4",
     "ScratchGPTConfig.emb_dim=-4 is invalid: emb_dim must be a positive integer", 2),
    ("heads do not divide", "pretrain --data {corpus} --n_heads 3", "must be divisible by n_heads=3", 2),
    ("vocabulary too small", "pretrain --data {corpus} --tokenizer_vocab_size 2",
     "vocab_size=2 is too small for a char tokenizer", 1),
    ("dropout above 1", "pretrain --data {corpus} --drop_rate 1.5", "drop_rate=1.5 is invalid", 2),
    ("unknown activation", "pretrain --data {corpus} --activation_function swishy",
     "activation_function='swishy' is invalid", 2),
    # pretrain: models and tokenizers to continue from
    ("model of another architecture", "pretrain --data {corpus} --model_name_or_path {root}/bert",
     "{root}/bert holds a 'bert' model; give a model this package saved, or a GPT-2 one", 1),
    ("model missing", "pretrain --data {corpus} --model_name_or_path {root}/nomodel",
     "Model {root}/nomodel does not exist; give a folder written by save_pretrained, or a Hub id", 1),
    ("model weights truncated", "pretrain --data {corpus} --model_name_or_path {root}/truncated",
     "The weights in {root}/truncated cannot be read", 1),
    ("config not JSON", "pretrain --data {corpus} --model_name_or_path {root}/config_not_json",
     "{root}/config_not_json/config.json is not valid JSON", 1),
    ("tokenizer larger than model", "pretrain --data {corpus} --model_name_or_path {root}/small_model "
     "--tokenizer_name_or_path {model}", "tokens but the vocabulary of the model in {root}/small_model holds 10", 1),
    ("tokenizer is a file", "pretrain --data {corpus} --tokenizer_name_or_path {sms}",
     "{sms} is not a folder; give the folder a model and its tokenizer were saved to", 1),
    ("tokenizer corrupted", "pretrain --data {corpus} --tokenizer_name_or_path {root}/bad_tokenizer",
     "Cannot load the tokenizer of {root}/bad_tokenizer", 1),
    # pretrain: the output folder
    ("output is a file", "pretrain --data {corpus} --output_dir {root}/a_file", "{root}/a_file is a file", 1),
    ("output under a file", "pretrain --data {corpus} --output_dir {root}/a_file/run",
     "Output folder {root}/a_file/run cannot be created: {root}/a_file is a file", 1),
    ("output not writable", "pretrain --data {corpus} --output_dir /proc/hf-scratch-gpt-run",
     "Output folder /proc/hf-scratch-gpt-run cannot be written", 1),
    ("output holds another model", "pretrain --data {corpus} --output_dir {root}/other_model_run",
     "already holds a different model", 1),
    ("resume without checkpoints", "pretrain --data {corpus} --resume_from_checkpoint last",
     "holds no complete checkpoint to resume from", 1),
    ("resume from a missing folder", "pretrain --data {corpus} --resume_from_checkpoint {root}/nowhere",
     "--resume_from_checkpoint {root}/nowhere is not a complete checkpoint", 1),
    # flags the parser refuses
    ("flag file missing", "classify {root}/nowhere.yaml", "Config file {root}/nowhere.yaml does not exist", 2),
    ("flag file not a mapping", "classify --config {root}/flags_a_list.yaml",
     "Config file {root}/flags_a_list.yaml holds a list, not a mapping of flag names to values", 2),
    ("flag file not JSON", "instruct {root}/flags_broken.json", "Config file {root}/flags_broken.json is not valid", 2),
    ("flag file unknown flag", "pretrain --config {root}/flags_unknown.yaml",
     "Some specified arguments are not used by the HfArgumentParser: ['--bogus'", 2),
    ("flag file flag without file", "pretrain --config", "--config needs a YAML or JSON file of flags", 2),
    ("unknown flag", "pretrain --bogus 1", "Some specified arguments are not used by the HfArgumentParser: ['--bogus'",
     2),
    ("not a number", "pretrain --max_steps many", "argument --max_steps/--max-steps: invalid int value: 'many'", 2),
    ("unknown strategy", "pretrain --eval_strategy sometimes",
     "--eval_strategy/--eval-strategy: invalid choice: 'sometimes' (choose from 'no', 'steps', 'epoch')", 2),
    ("unknown tokenizer kind", "pretrain --tokenizer_kind words",
     "argument --tokenizer_kind/--tokenizer-kind: invalid choice: 'words'", 2),
    # classify
    ("labels missing", "classify --model {model} --data {root}/no_label.tsv", "has no column 'label'", 1),
    ("one class", "classify --model {model} --data {root}/one_class.tsv",
     "The label column has a single class (['ham']); classification needs at least two", 1),
    ("a row without a label", "classify --model {model} --data {root}/empty_label.tsv",
     "Data {root}/empty_label.tsv: row 3 has no 'label'; give every row one", 1),
    ("no rows", "classify --model {model} --data {root}/header_only.tsv",
     "Data {root}/header_only.tsv holds no rows (a header at most)", 1),
    ("labels binary", "classify --model {model} --data {root}/binary.tsv", "is not UTF-8 text", 1),
    ("fractions do not sum to 1", "classify --model {model} --data {sms} --split_fractions 0.5 0.6 0.1",
     "fractions=[0.5, 0.6, 0.1] is invalid: give three non-negative train / validation / test fractions that sum "
     "to 1", 1),
    ("fraction leaves a split empty", "classify --model {model} --data {sms} --split_fractions 0.98 0.01 0.01",
     "The validation split is empty: 30 rows x 0.01 < 1", 1),
    ("classifier max_length above context", "classify --model {model} --data {sms} --max_length 100",
     "max_length=100 is invalid: it must be between 1 and the model's context length 32", 1),
    ("classifier max_length zero", "classify --model {model} --data {sms} --max_length 0",
     "max_length=0 is invalid: it must be between 1 and the model's context length 32", 1),
    ("instruction max_length zero", "instruct --model {model} --data {instructions} --max_length 0",
     "max_length=0 is invalid: it must be between 1 and the model's context length 32", 1),
    ("LoRA rank zero", "classify --model {model} --data {sms} --lora_r 0", "--lora_r=0 is invalid", 2),
    ("LoRA dropout", "classify --model {model} --data {sms} --lora_dropout 1", "--lora_dropout=1.0 is invalid", 2),
    ("LoRA target unknown", "classify --model {model} --data {sms} --lora_target_modules c_attn",
     "LoRA target module(s) ['c_attn'] do not exist in the model", 1),
    ("epochs zero", "classify --model {model} --data {sms} --num_train_epochs 0", "--num_train_epochs=0.0 is invalid",
     2),
    ("classifier base missing", "classify --model {root}/nomodel --data {sms}", "{root}/nomodel does not exist", 1),
    ("classifier base is a file", "classify --model {sms} --data {sms}",
     "{sms} is not a model folder: it has no config.json", 1),
    ("classifier base of another architecture", "classify --model {root}/bert --data {sms}",
     "holds a 'bert' model", 1),
    ("classifier base with foreign code", "classify --model {root}/foreign --data {sms}", "holds a 'evil' model", 1),
    # instruct
    ("instructions not records", "instruct --model {model} --data {root}/a_string.json",
     "is not a list of records: record 1 is a JSON str", 1),
    ("instructions JSON Lines broken", "instruct --model {model} --data {root}/broken.jsonl",
     "{root}/broken.jsonl is neither JSON nor JSON Lines: line 2", 1),
    ("instruction without output", "instruct --model {model} --data {root}/missing_output.json",
     "record 2 has no 'output'; give every record one", 1),
    ("instructions without instruction", "instruct --model {model} --data {root}/no_instruction.json",
     "has records without an 'instruction' field", 1),
    ("instructions max_new_tokens zero", "instruct --model {model} --data {instructions} --max_new_tokens 0",
     "--max_new_tokens=0 is invalid", 2),
    ("instruct base corrupted", "instruct --model {root}/garbage_weights --data {instructions}",
     "The weights in {root}/garbage_weights cannot be read", 1),
    ("instruct base with foreign code", "instruct --model {root}/foreign --data {instructions}",
     "holds a 'evil' model", 1),
    ("pretrain from foreign code", "pretrain --data {corpus} --model_name_or_path {root}/foreign",
     "holds a 'evil' model", 1),
    ("unknown mode", "instruct --model {model} --data {instructions} --mode some", "invalid choice: 'some'", 2),
    # generate and chat
    ("generate missing folder", "generate {root}/nomodel", "Model {root}/nomodel does not exist", 1),
    ("generate folder without config", "generate {root}/no_config", "is not a model folder: it has no config.json", 1),
    ("generate config a list", "generate {root}/config_a_list",
     "{root}/config_a_list/config.json holds a JSON list, not an object of config fields", 1),
    ("generate config of wrong type", "generate {root}/config_wrong_type",
     "Field 'n_heads' expected int, got str (value: 'four')", 1),
    ("generate config bad value", "generate {root}/config_bad_value", "must be divisible by n_heads=2", 1),
    ("generate config misspelt", "generate {root}/config_misspelt",
     "ScratchGPTConfig got n_layer=3, a field it does not have; did you mean n_layers?", 1),
    ("generate config without type", "generate {root}/config_no_type", "holds a None model", 1),
    ("generate another architecture", "generate {root}/bert", "{root}/bert holds a 'bert' model", 1),
    ("generate foreign code", "generate {root}/foreign", "{root}/foreign holds a 'evil' model", 1),
    ("generate truncated weights", "generate {root}/truncated", "the file is truncated or corrupted; save or download "
     "the model again", 1),
    ("generate garbage weights", "generate {root}/garbage_weights", "cannot be read", 1),
    ("generate corrupted tokenizer", "generate {root}/bad_tokenizer",
     "Cannot load the tokenizer of {root}/bad_tokenizer",
     1),
    ("generate max-new-tokens zero", "generate {model} --max-new-tokens 0", "--max_new_tokens=0 is invalid: it must be "
     "positive", 2),
    ("generate temperature negative", "generate {model} --temperature -1",
     "--temperature=-1.0 is invalid: it must be >= 0", 2),
    ("generate empty prompt", "generate {model} --prompt ''", "--prompt is empty; give some text to continue", 1),
    ("generate prompt fills the context", "generate {model} --prompt '" + "every effort " * 5 + "'",
     "The prompt has 65 tokens, which fills the model's context of 32; shorten it", 1),
    ("chat without chat template", "chat {model}", "has no chat template", 1),
    # convert and push
    ("convert missing", "convert {root}/nomodel {out}", "{root}/nomodel does not exist", 1),
    ("convert another architecture", "convert {root}/bert {out}", "holds a 'bert' model", 1),
    ("convert truncated weights", "convert {root}/truncated {out}", "cannot be read", 1),
    ("convert corrupt tokenizer", "convert {root}/bad_tokenizer {out}",
     "Cannot load the tokenizer of {root}/bad_tokenizer", 1),
    ("convert into a non-empty folder", "convert {model} {root}/mixed", "already exists and is not empty", 1),
    ("push a file", "push {sms} someone/model", "does not exist; give a folder written by save_pretrained", 1),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(world, tmp_path, capsys, case):
    _, template, message, status = case
    out = tmp_path / "out"
    names = {key: value for key, value in world.items()} | {"out": out}
    argv = [arg.format(**names) for arg in shlex.split(template)]
    if argv[0] in ("pretrain", "classify", "instruct") and "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    if argv[0] == "pretrain":
        argv[1:1] = shlex.split(TINY)  # first, so that the case's own flags win
    before = sorted(p.relative_to(world["root"]) for p in world["root"].rglob("*"))

    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-scratch-gpt")]
    assert lines == [err.strip().splitlines()[-1]], err  # exactly one line of ours, the last
    assert lines[0].startswith(f"hf-scratch-gpt {argv[0]}: error: ")
    assert message.format(**names) in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.relative_to(world["root"]) for p in world["root"].rglob("*")) == before
    assert not (world["root"] / "ran").exists()  # no foreign code ever ran


def test_compiling_on_the_cpu_without_a_compiler_is_refused_before_anything_runs(world, tmp_path, monkeypatch,
                                                                                 capsys):
    """torch.compile builds CPU kernels with a C++ compiler; without one it would fail at the first step."""
    monkeypatch.setenv("CXX", "no-such-compiler")
    out = tmp_path / "out"
    argv = ["pretrain", "--data", str(world["corpus"]), "--output_dir", str(out), *shlex.split(TINY),
            "--torch_compile", "true"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-scratch-gpt pretrain: error: --torch_compile on the CPU needs a C++ compiler, and "
                              "no-such-compiler was not found") and len([e for e in err if "error" in e]) == 1
    assert not out.exists()
    # A compile backend or mode implies compiling; without compiling, no compiler is needed.
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        PretrainingArguments(output_dir=str(out), use_cpu=True, torch_compile_mode="default")
    assert not PretrainingArguments(output_dir=str(out), use_cpu=True).torch_compile
    monkeypatch.setenv("CXX", shutil.which("python3") or sys.executable)  # a program that exists passes the check
    assert PretrainingArguments(output_dir=str(out), use_cpu=True, torch_compile=True).torch_compile


def test_disk_full_while_saving_leaves_no_half_written_files(world, tmp_path, monkeypatch, capsys):
    """The final save goes to a staging folder first: when the disk fills up, the output holds the intact
    checkpoints and nothing half-written, and the error says how to go on."""
    import transformers.modeling_utils

    out = tmp_path / "run"
    argv = ["pretrain", "--data", world["corpus"], "--output_dir", str(out), *shlex.split(TINY), "--save_steps", "2",
            "--eval_steps", "2"]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    saves = []
    real_save = transformers.modeling_utils.safe_save_file

    def save_then_fill_up(tensors, filename, *args, **kwargs):
        saves.append(filename)
        if "checkpoint-" not in str(filename):  # checkpoints fit; the final model does not
            disk_full()
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_then_fill_up)
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"hf-scratch-gpt pretrain: error: [Errno 28] No space left on the device while saving to {out}; "
                     "free some space and run again with --resume_from_checkpoint last.")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]  # no model, card, plot or staging folder

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real_save)
    assert main([*argv, "--resume_from_checkpoint", "last"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_generation_past_the_context_stops_at_its_end(world, capsys):
    """The CLI caps --max-new-tokens at the room left in the context (documented in --help)."""
    assert main(["generate", world["model"], "--prompt", "Line", "--max-new-tokens", "500"]) == 0
    tokenizer = load_tokenizer(world["model"])
    assert len(tokenizer(capsys.readouterr().out.rstrip("\n")).input_ids) <= 32


def _tokenizer(world):
    return load_tokenizer(world["model"], pad_with_eos=True)


def _tiny_model():
    return ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=20, context_length=8, emb_dim=8, n_heads=2,
                                                  n_layers=1)).eval()


# (id, call(world), what the ValueError must say)
API_CASES = [
    ("load_corpus missing", lambda w: load_corpus(f"{w['root']}/nowhere.txt"), "does not exist"),
    ("load_corpus empty folder", lambda w: load_corpus(_empty_folder(w)), "holds no files"),
    ("build_lm_dataset max_length", lambda w: build_lm_dataset(load_corpus(w["corpus"]), _tokenizer(w), 0),
     "max_length=0 is invalid"),
    ("build_lm_dataset validation", lambda w: build_lm_dataset(load_corpus(w["corpus"]), _tokenizer(w), 8,
                                                               validation_fraction=-0.1), "validation_fraction=-0.1"),
    ("load_labelled not records", lambda w: load_labelled(f"{w['root']}/list_of_numbers.json"),
     "is not a list of records"),
    ("build_classification_dataset fractions", lambda w: build_classification_dataset(
        load_labelled(w["sms"]), _tokenizer(w), 16, (0.5, 0.5, 0.5)), "fractions=[0.5, 0.5, 0.5] is invalid"),
    ("build_classification_dataset max_length", lambda w: build_classification_dataset(
        load_labelled(w["sms"]), _tokenizer(w), -1), "max_length=-1 is invalid"),
    ("split_dataset empty split", lambda w: split_dataset(load_labelled(w["sms"]), (0.99, 0.005, 0.005)),
     "The validation split is empty"),
    ("load_instructions missing field", lambda w: load_instructions(f"{w['root']}/missing_output.json"),
     "record 2 has no 'output'"),
    ("build_instruction_dataset without template", lambda w: build_instruction_dataset(
        load_instructions(w["instructions"]), _tokenizer(w)), "has no chat template"),
    ("train_tokenizer kind", lambda w: train_tokenizer(["text"], kind="wordpiece"),
     "Tokenizer kind 'wordpiece' is unknown"),
    ("train_tokenizer empty", lambda w: train_tokenizer(["", "  "]), "empty corpus"),
    ("train_tokenizer not text", lambda w: train_tokenizer(["fine", 42]), "Expected texts or file paths, got a int"),
    ("train_tokenizer lone surrogate", lambda w: train_tokenizer(["fine", "bad \udc80 text"], kind="char"),
     "Text 2 is not valid Unicode: it holds a lone surrogate U+DC80 at position 4"),
    ("gpt2_tokenizer missing files", lambda w: gpt2_tokenizer(f"{w['root']}/vocab.json", f"{w['root']}/merges.txt"),
     "GPT-2 tokenizer file"),
    ("gpt2_tokenizer not a vocabulary", lambda w: gpt2_tokenizer(f"{w['root']}/list_of_numbers.json", w["sms"]),
     "is not GPT-2's vocabulary"),
    ("ScratchGPTConfig misspelt", lambda w: ScratchGPTConfig(n_layer=2), "did you mean n_layers?"),
    ("ScratchGPTConfig heads", lambda w: ScratchGPTConfig(emb_dim=10, n_heads=4), "must be divisible by n_heads=4"),
    ("ScratchGPTConfig token id", lambda w: ScratchGPTConfig(vocab_size=10, eos_token_id=10),
     "eos_token_id=10 is invalid"),
    ("load_model another architecture", lambda w: load_model(f"{w['root']}/bert", ScratchGPTForCausalLM),
     "holds a 'bert' model"),
    ("load_model truncated", lambda w: load_model(f"{w['root']}/truncated", ScratchGPTForCausalLM),
     "truncated or corrupted"),
    ("load_tokenizer missing", lambda w: load_tokenizer(f"{w['root']}/nowhere"), "does not exist"),
    ("from_gpt2 not GPT-2", lambda w: from_gpt2(_tiny_model()), "from_gpt2 takes a GPT2LMHeadModel"),
    ("forward past the context", lambda w: _tiny_model()(torch.zeros(1, 9, dtype=torch.long)),
     "context_length=8"),
    ("generate past the context", lambda w: _tiny_model().generate(torch.zeros(1, 4, dtype=torch.long),
                                                                    max_new_tokens=10, do_sample=False),
     "context_length=8"),
    ("collator without prompt_length", lambda w: InstructionCollator(0)([{"input_ids": [1, 2]}]), "prompt_length"),
    ("pretrain learning rate", lambda w: pretrain(training_args=PretrainingArguments(
        output_dir=f"{w['root']}/never", learning_rate=-1.0)), "--learning_rate=-1.0 is invalid"),
    ("classify LoRA alpha", lambda w: classify(ClassificationArguments(model=w["model"], data=w["sms"], lora_alpha=0)),
     "--lora_alpha=0 is invalid"),
    ("instruct batch size", lambda w: instruct(
        InstructionArguments(model=w["model"], data=w["instructions"]),
        InstructionTrainingArguments(output_dir=f"{w['root']}/never", per_device_train_batch_size=0)),
     "--per_device_train_batch_size=0 is invalid"),
]


def _empty_folder(world):
    folder = world["root"] / "empty_folder"
    folder.mkdir(exist_ok=True)
    return str(folder)


@pytest.mark.parametrize("case", API_CASES, ids=[case[0] for case in API_CASES])
def test_public_functions_refuse_bad_input_with_a_specific_error(world, case):
    _, call, message = case
    with pytest.raises(ValueError) as raised:
        call(world)
    assert message in str(raised.value)
    assert not (world["root"] / "never").exists()
