"""The recipes under several processes: `torchrun` and `accelerate launch` with 2 CPU processes (gloo), and,
where deepspeed is installed, accelerate with our DeepSpeed example configs.

Each launch starts two Pythons (10-20 s): the default run launches every recipe with torchrun, the rest is
slow. All of them: `python -m pytest -m "" tests/test_distributed.py`.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from packaging import version
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_scratch_gpt.data import build_classification_dataset, load_labelled

# A run of the CLI (`main`), plus records for the test: each rank's in-memory model's logits at the end of
# training, which ranks entered the final save, and which found the output folder finished when theirs returned.
RECIPE_RUN = """
import functools
import importlib
import os
import sys
import torch
from safetensors.torch import save_file
from transformers import TrainerCallback
from hf_scratch_gpt.cli import COMMANDS, main
from hf_scratch_gpt.recipes import runs

command, records = sys.argv[1], sys.argv[2]

class RecordLogits(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():  # the class's forward: accelerate wraps the instance's in autocast when training bf16
            logits = type(model).forward(model, input_ids=torch.arange(1, 9).unsqueeze(0)).logits
        save_file({"logits": logits.contiguous()}, f"{records}/logits-rank{args.process_index}.safetensors")

def recorded(saving_into):
    def wrapper(output_dir):
        import torch.distributed as dist
        open(f"{records}/saved-by-rank{dist.get_rank()}", "w").close()
        return saving_into(output_dir)
    return wrapper

runs.saving_into = recorded(runs.saving_into)
# the recipe's function is named as its command
module = importlib.import_module(f"hf_scratch_gpt.{COMMANDS[command][1]}")
setattr(module, command, functools.partial(getattr(module, command), callbacks=[RecordLogits()]))
status = main([command, *sys.argv[3:]])
if os.path.isfile(os.path.join(sys.argv[sys.argv.index("--output_dir") + 1], "README.md")):
    open(f"{records}/finished-when-rank{os.environ['RANK']}-returned", "w").close()
sys.exit(status)
"""


EXAMPLE_CONFIGS = Path(__file__).parents[2] / "examples" / "accelerate"
DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install deepspeed")
LAUNCHERS = ["torchrun", pytest.param("accelerate", marks=pytest.mark.slow),
             pytest.param("deepspeed_zero2", marks=[pytest.mark.slow, DEEPSPEED])]


def launch(launcher: str, *args, cwd: Path, succeed: bool = True) -> subprocess.CompletedProcess:
    """Run `args` on 2 processes by `torchrun`, `accelerate launch`, or accelerate with one of our example
    configs (named without .yaml) shrunk to this machine."""
    if launcher == "torchrun":
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    elif launcher == "accelerate":  # its --cpu launcher needs MPI for several processes; this one runs on CPUs
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        config = yaml.safe_load((EXAMPLE_CONFIGS / f"{launcher}.yaml").read_text()) | {
            "num_processes": 2, "mixed_precision": "no"}
        (cwd / "accelerate.yaml").write_text(yaml.safe_dump(config))
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cwd / "accelerate.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([*runner, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert (result.returncode == 0) == succeed, result.stderr[-4000:]
    return result


# No --use_cpu: the recipes join the processes on a machine without GPUs by themselves.
QUIET = ["--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--report_to", "none", "--seed", "0"]


@pytest.fixture(scope="module")
def base(run_folders):
    """The pretrained folder of conftest's runs: the base model of the fine-tuning runs."""
    return run_folders["pretrain"]


def run_recipe(launcher, command, flags, tmp_path) -> tuple[Path, Path]:
    records = tmp_path / "records"
    records.mkdir()
    script = tmp_path / "recipe_run.py"
    script.write_text(RECIPE_RUN)
    out = tmp_path / "out"
    if launcher.startswith("deepspeed"):  # as its config says (mixed_precision: no): DeepSpeed's bf16 keeps the
        flags = [*flags, "--bf16", "false"]  # weights in bf16, and the checks compare them with fp32 results
    result = launch(launcher, str(script), command, str(records), *flags, "--output_dir", str(out), *QUIET,
                    cwd=tmp_path)
    assert result.stdout.count(f" to {out}") == 1  # "Saved ... to": one process saved, one says so
    return out, records


def check_one_model_trained_by_two_ranks(out: Path, records: Path, model_class):
    assert json.loads((out / "training_args.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in records.glob("saved-by-*")) == ["saved-by-rank0"]  # only rank 0 writes
    assert len(list(records.glob("finished-when-*"))) == 2  # no process ends the run before the folder is written
    assert not list(out.glob(".saving-*"))
    rank0 = load_file(records / "logits-rank0.safetensors")["logits"]
    rank1 = load_file(records / "logits-rank1.safetensors")["logits"]
    torch.testing.assert_close(rank1, rank0, atol=1e-6, rtol=0)  # DDP kept the replicas equal
    saved = model_class.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=torch.arange(1, 9).unsqueeze(0)).logits, rank0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("launcher", [*LAUNCHERS, pytest.param("deepspeed_zero3", marks=[pytest.mark.slow, DEEPSPEED])])
def test_pretrain_on_two_processes(run_folders, tmp_path, launcher):
    flags = ["--data", str(run_folders["root"] / "corpus.txt"), "--tokenizer_kind", "char", "--context_length", "64",
             "--emb_dim", "32", "--n_heads", "2", "--n_layers", "2", "--max_length", "32",
             "--per_device_train_batch_size", "4", "--max_steps", "6", "--eval_steps", "3", "--save_steps", "3"]
    out, records = run_recipe(launcher, "pretrain", flags, tmp_path)
    check_one_model_trained_by_two_ranks(out, records, AutoModelForCausalLM)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (out / "README.md").is_file()
    assert "| processes | 2 |" in (out / "README.md").read_text()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_classify_on_two_processes_gathers_the_test_metrics(base, run_folders, tmp_path, launcher):
    data = run_folders["root"] / "sms.tsv"
    flags = ["--model", str(base), "--data", str(data), "--text_column", "SMS", "--label_column", "Label",
             "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
             "--learning_rate", "1e-2", "--split_fractions", "0.7", "0.125", "0.175"]
    out, records = run_recipe(launcher, "classify", flags, tmp_path)
    check_one_model_trained_by_two_ranks(out, records, AutoModelForSequenceClassification)

    tokenizer = AutoTokenizer.from_pretrained(out)
    splits = build_classification_dataset(load_labelled(data, "SMS", "Label"), tokenizer, 256, (0.7, 0.125, 0.175))
    state = json.loads(sorted(out.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["global_step"] == math.ceil(len(splits["train"]) / (4 * 2))  # each rank saw half the rows
    # The test metrics cover the whole test split (gathered from both ranks, no duplicates), not one rank's half.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        predicted = [model(input_ids=torch.tensor([row["input_ids"]])).logits.argmax(-1).item()
                     for row in splits["test"]]
    accuracy = sum(p == row["labels"] for p, row in zip(predicted, splits["test"])) / len(predicted)
    assert len(splits["test"]) % 2 == 1  # uneven: a naive gather would count a row twice
    assert json.loads((out / "test_results.json").read_text())["test_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_instruct_on_two_processes(base, run_folders, tmp_path, launcher):
    flags = ["--model", str(base), "--data", str(run_folders["root"] / "instructions.json"), "--num_train_epochs", "1",
             "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--max_new_tokens", "4"]
    out, records = run_recipe(launcher, "instruct", flags, tmp_path)
    check_one_model_trained_by_two_ranks(out, records, AutoModelForCausalLM)
    state = json.loads(sorted(out.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["global_step"] == 20 // (2 * 2)  # 24 records: 20 train, split between the ranks
    assert len(json.loads((out / "test_responses.json").read_text())) == 3  # rank 0 answers the whole test split
    results = json.loads((out / "test_results.json").read_text())
    assert results["test_loss"] < results["base_test_loss"]


@pytest.mark.slow
@DEEPSPEED
def test_fine_tuning_refuses_zero3_before_training(base, run_folders, tmp_path):
    flags = ["--model", str(base), "--data", str(run_folders["root"] / "sms.tsv"), "--text_column", "SMS",
             "--label_column", "Label", "--num_train_epochs", "1"]
    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "recipe_run.py").write_text(RECIPE_RUN)
    result = launch("deepspeed_zero3", "recipe_run.py", "classify", str(records), *flags, "--output_dir",
                    str(tmp_path / "out"), *QUIET, cwd=tmp_path, succeed=False)
    assert "launch without FSDP / ZeRO-3" in result.stderr
    assert not (tmp_path / "out").exists() and not list(records.iterdir())


ZERO3_EVERY_WEIGHT_PARTITIONED = {  # as at real size, where no weight is small enough to stay whole on each process
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                          "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
}


@pytest.mark.slow
@DEEPSPEED
@pytest.mark.parametrize("tied", ["true", "false"])
def test_pretrain_under_zero3_with_every_weight_partitioned_matches_one_process(tmp_path, tied):
    """Each step's batch is the whole training set (18 windows: 9 per process), so two ZeRO-3 processes and one
    plain process take the same steps: the same losses, step by step. The loss reads the output head's weight
    (tied to the token embedding, or not), which ZeRO-3 holds whole only inside the head's own forward."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(12)))
    (tmp_path / "ds.json").write_text(json.dumps(ZERO3_EVERY_WEIGHT_PARTITIONED))
    flags = ["--data", str(corpus), "--tokenizer_kind", "char", "--context_length", "32", "--emb_dim", "32",
             "--n_heads", "2", "--n_layers", "2", "--drop_rate", "0", "--max_length", "32", "--max_steps", "4",
             "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-2",
             "--tie_word_embeddings", tied, "--bf16", "false", *QUIET]  # the same steps, to fp32 rounding
    launch("torchrun", "-m", "hf_scratch_gpt.cli", "pretrain", *flags, "--per_device_train_batch_size", "9",
           "--deepspeed", str(tmp_path / "ds.json"), "--output_dir", str(tmp_path / "zero3"), cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "hf_scratch_gpt.cli", "pretrain", *flags, "--per_device_train_batch_size",
                    "18", "--output_dir", str(tmp_path / "one")], cwd=tmp_path, check=True, capture_output=True)

    def losses(out):
        history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        return [entry.get("loss", entry.get("eval_loss")) for entry in history
                if "loss" in entry or "eval_loss" in entry]

    zero3, one = losses(tmp_path / "zero3"), losses(tmp_path / "one")
    assert len(zero3) == len(one) == 6  # 4 training steps, 2 evaluations
    assert zero3 == pytest.approx(one, rel=1e-4)
    torch.testing.assert_close(load_file(tmp_path / "zero3" / "model.safetensors"),
                               load_file(tmp_path / "one" / "model.safetensors"), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@DEEPSPEED
def test_pretrain_under_zero3_refuses_a_config_that_would_not_save_the_model(run_folders, tmp_path):
    config = {**ZERO3_EVERY_WEIGHT_PARTITIONED, "zero_optimization": {"stage": 3}}
    (tmp_path / "ds.json").write_text(json.dumps(config))
    corpus = str(run_folders["root"] / "corpus.txt")
    result = launch("torchrun", "-m", "hf_scratch_gpt.cli", "pretrain", "--data", corpus,
                    "--tokenizer_kind", "char", "--context_length", "32", "--emb_dim", "32", "--n_heads", "2",
                    "--n_layers", "1", "--max_steps", "2", "--deepspeed", str(tmp_path / "ds.json"), "--output_dir",
                    str(tmp_path / "out"), *QUIET, cwd=tmp_path, succeed=False)
    assert "error: DeepSpeed ZeRO-3 gives the trained model whole only with" in result.stderr
    assert not (tmp_path / "out").exists()


FSDP_RUN = """
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM
import hf_scratch_gpt

dist.init_process_group("gloo")
model = AutoModelForCausalLM.from_pretrained(__import__("sys").argv[1])
ids = torch.arange(1, 17).reshape(2, 8)
whole = model(input_ids=ids, labels=ids).loss.item()
blocks = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]  # what auto-wrap wraps
for block in blocks:
    fully_shard(block)
fully_shard(model)
loss = model(input_ids=ids, labels=ids).loss
loss.backward()
assert len(blocks) == model.config.n_layers and all(type(p).__name__ == "DTensor" for p in model.parameters())
assert abs(loss.item() - whole) < 1e-5, (loss.item(), whole)
print("fsdp ok", dist.get_rank())
"""


@pytest.mark.slow
def test_fsdp_shards_the_model_block_by_block(run_folders, tmp_path):
    """FSDP2 on CPU (gloo), wrapping what `_no_split_modules` names, as accelerate's TRANSFORMER_BASED_WRAP
    does: the sharded model computes the loss of the whole one and back-propagates."""
    script = tmp_path / "fsdp_run.py"
    script.write_text(FSDP_RUN)
    result = launch("torchrun", str(script), str(run_folders["pretrain"]), cwd=tmp_path)
    assert result.stdout.count("fsdp ok") == 2


# pretrain on 2 processes, recording each rank's collated batches in order; killed (SIGKILL) after a given step.
RECORDED_PRETRAIN = """
import functools, json, os, signal, sys
from transformers import TrainerCallback, default_data_collator
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.recipes import pretraining

records, kill_at = sys.argv[1], int(sys.argv[2])

def recording(features):
    with open(f"{records}/batches-rank{os.environ['RANK']}.jsonl", "a") as file:
        file.write(json.dumps([list(map(int, f["input_ids"])) for f in features]) + "\\n")
    return default_data_collator(features)

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

pretraining.default_data_collator = recording
pretraining.pretrain = functools.partial(pretraining.pretrain, callbacks=[KillAt()])
sys.exit(main(["pretrain", *sys.argv[3:]]))
"""


def recorded_pretrain(tmp_path, name, flags, kill_at=0, succeed=True):
    records = tmp_path / f"records-{name}"
    records.mkdir()
    script = tmp_path / "recorded_pretrain.py"
    script.write_text(RECORDED_PRETRAIN)
    launch("torchrun", str(script), str(records), str(kill_at), *flags, "--output_dir", str(tmp_path / name),
           *QUIET, cwd=tmp_path, succeed=succeed)
    return [[json.loads(line) for line in (records / f"batches-rank{r}.jsonl").read_text().splitlines()]
            for r in range(2)]


def assert_same_weights(first: Path, second: Path):
    expected = load_file(first / "model.safetensors")
    for name, tensor in load_file(second / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0)


STREAM_DOCUMENTS = [[f"file {n} document {i}: every effort moves you." for i in range(30)] for n in range(2)]


@pytest.fixture
def two_file_stream(tmp_path):
    from hf_scratch_gpt.tokenization import train_tokenizer

    for n, documents in enumerate(STREAM_DOCUMENTS):
        (tmp_path / f"part{n}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    tokenizer = train_tokenizer(["".join(STREAM_DOCUMENTS[0] + STREAM_DOCUMENTS[1])], kind="char")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    flags = ["--data", str(tmp_path / "part*.jsonl"), "--streaming", "true", "--tokenizer_name_or_path",
             str(tmp_path / "tokenizer"), "--validation_documents", "4", "--context_length", "16", "--emb_dim",
             "16", "--n_heads", "2", "--n_layers", "1", "--max_steps", "8", "--per_device_train_batch_size", "4",
             "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "2"]
    return tokenizer, flags


def test_each_process_streams_its_own_file_and_resumes_where_it_left_off(tmp_path, two_file_stream):
    tokenizer, flags = two_file_stream
    straight = recorded_pretrain(tmp_path, "straight", flags)
    # Two files, two processes: each reads its own file (split_dataset_by_node), and nothing splits it again:
    # its first batches are its file's first windows, in order (the validation documents, the stream's first
    # four, are left out).
    for rank, batches in enumerate(straight):
        documents = STREAM_DOCUMENTS[rank][4 if rank == 0 else 0 :]
        stream = tokenizer("".join(d + "<|endoftext|>" for d in documents)).input_ids
        windows = [stream[i : i + 16] for i in range(0, len(stream) - 15, 16)]
        assert [w for batch in batches[:3] for w in batch] == windows[:12]

    killed = recorded_pretrain(tmp_path, "resumed", flags, kill_at=6, succeed=False)
    assert len(killed[0]) >= 6
    resumable = version.parse(transformers.__version__) >= version.parse("5.18")  # see _check_resumable_on_cpus
    result = launch("torchrun", "-m", "hf_scratch_gpt.cli", "pretrain", *flags, "--output_dir",
                    str(tmp_path / "resumed"), "--resume_from_checkpoint", "last", *QUIET, cwd=tmp_path,
                    succeed=resumable)
    if not resumable:
        assert "Resuming a run on several CPU processes needs transformers >= 5.18" in result.stderr
        return
    assert {p.name for p in (tmp_path / "resumed" / "checkpoint-4").glob("stream_state-*")} == {
        "stream_state-0.json", "stream_state-1.json"}
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.slow
def test_prepared_windows_resume_after_a_kill_on_two_processes(run_folders, tmp_path):
    flags = ["--data", str(run_folders["root"] / "corpus.txt"), "--tokenizer_kind", "char", "--context_length",
             "16", "--emb_dim", "16", "--n_heads", "2", "--n_layers", "1", "--max_steps", "8",
             "--per_device_train_batch_size", "4", "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "2"]
    straight = recorded_pretrain(tmp_path, "straight", flags)
    first_batches = [{json.dumps(w) for batch in batches[:3] for w in batch} for batches in straight]  # before any eval
    assert len(first_batches[0]) == 12 and not first_batches[0] & first_batches[1]  # each rank its own windows
    recorded_pretrain(tmp_path, "resumed", flags, kill_at=6, succeed=False)
    launch("torchrun", "-m", "hf_scratch_gpt.cli", "pretrain", *flags, "--output_dir", str(tmp_path / "resumed"),
           "--resume_from_checkpoint", "last", *QUIET, cwd=tmp_path)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
