"""The CLI's shape: `--help` lists the commands, `--version`, flags grouped by what they set, any
`ScratchGPTConfig` field from the command line, flags from a YAML or JSON file (the command line wins), and
the `run.yaml` every run writes, which reruns it."""

import json
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml
from safetensors.torch import load_file

from hf_scratch_gpt.cli import COMMANDS, main

TINY = {"tokenizer_kind": "char", "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "max_length": 32,
        "max_steps": 4, "eval_steps": 2, "save_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
        "disable_tqdm": True, "dataloader_pin_memory": False, "seed": 3}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"Line {i}: every effort moves you, said the painter.\n" for i in range(120)))
    return path


def test_help_lists_every_command_with_its_description(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name, (help_text, _) in COMMANDS.items():
        assert f"  {name}" in printed and help_text in printed
    assert "run.yaml" in printed and "--config" in printed
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hf-scratch-gpt {version('hf-scratch-gpt')}"


def test_command_help_groups_the_flags():
    result = subprocess.run([sys.executable, "-m", "hf_scratch_gpt.cli", "pretrain", "--help"], capture_output=True,
                            text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120)
    assert result.returncode == 0
    sections = [line.rstrip(":") for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert {"model", "data", "training"} <= set(sections)
    model_section = result.stdout.split("\nmodel:")[1].split("\ndata:")[0]
    for flag in ("--n_layers", "--layer_norm_epsilon", "--initializer_range", "--tokenizer_kind"):
        assert flag in model_section


def test_a_flag_file_runs_and_the_command_line_wins(corpus, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**TINY, "data": str(corpus), "output_dir": str(tmp_path / "ignored"),
                                  "layer_norm_epsilon": 1e-3, "initializer_range": 0.05, "bias": False}))
    out = tmp_path / "out"
    assert main(["pretrain", "--config", str(config), "--output_dir", str(out), "--n_layers", "1"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["n_layers"], saved["layer_norm_epsilon"], saved["initializer_range"], saved["bias"]) == (
        1, 1e-3, 0.05, False)
    assert not (tmp_path / "ignored").exists()
    assert (out / "run.yaml").read_text().splitlines()[1] == (
        "# Run it again with: hf-scratch-gpt pretrain run.yaml --output_dir NEW_FOLDER")
    written = yaml.safe_load((out / "run.yaml").read_text())
    assert written["n_layers"] == 1 and written["layer_norm_epsilon"] == 1e-3 and written["output_dir"] == str(out)
    assert "resume_from_checkpoint" not in written and "disable_tqdm" in written


def test_run_yaml_reruns_the_run(corpus, tmp_path, capsys):
    first = tmp_path / "first"
    flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]
    assert main(["pretrain", "--data", str(corpus), "--output_dir", str(first), *flags]) == 0
    again = tmp_path / "again"
    assert main(["pretrain", str(first / "run.yaml"), "--output_dir", str(again)]) == 0
    weights, rerun = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert weights.keys() == rerun.keys() and all((weights[k] == rerun[k]).all() for k in weights)
    assert json.loads((first / "eval_results.json").read_text())["eval_loss"] == json.loads(
        (again / "eval_results.json").read_text())["eval_loss"]
