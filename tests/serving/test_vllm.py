"""vLLM serving our folders: its greedy tokens are generate()'s, through the engine and through `hf-scratch-gpt
serve`'s OpenAI-compatible server, also under concurrent load.

vLLM pins its own transformers and torch, so these tests run in a virtualenv of their own (.ci/run makes one);
where vLLM is not installed they are skipped, and with SCRATCH_GPT_VLLM_TESTS=required that is an error.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.cli import main

from support import INSTRUCTIONS, alpaca_char_tokenizer, memorised

if os.environ.get("SCRATCH_GPT_VLLM_TESTS") != "required":
    pytest.importorskip("vllm", reason="vLLM is not installed here (CI installs it in a virtualenv of its own)")

PROMPTS = ["Repeat the word.", "apple river", "Say hello", "stone and cloud and tiger", "r", "Hello! Hello!"]
NEW_TOKENS = 16
KV_CACHE = ["--kv-cache-memory-bytes", str(64 << 20)]  # the tiny models need little; vLLM's default takes 92% of RAM


def trained_folder(path, tied: bool):
    """A tiny causal LM trained a little on the Alpaca-prompted instructions (an untrained one repeats one token,
    which would hide a wrong position or head), saved with its character tokenizer and chat template."""
    tokenizer = alpaca_char_tokenizer(INSTRUCTIONS)
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=256, emb_dim=64, n_heads=2, n_layers=2,
                              drop_rate=0.0, tie_word_embeddings=tied, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    model = ScratchGPTForCausalLM(config)
    text = "".join(tokenizer.apply_chat_template([{"role": "user", "content": r["instruction"] + " " + r["input"]},
                                                  {"role": "assistant", "content": r["output"]}], tokenize=False)
                   for r in INSTRUCTIONS)
    memorised(model, tokenizer(text).input_ids, 64, lr=3e-3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["tied", "untied"])
def folder(request, tmp_path_factory):
    """A trained folder whose own model code cannot run: vLLM serves it with the package's (no remote code), as it
    serves folders saved by older releases, whose code predates what vLLM needs."""
    path = trained_folder(tmp_path_factory.mktemp(request.param), tied=request.param == "tied")
    (path / "modeling_scratch_gpt.py").write_text("raise ImportError('the folder\'s own model code ran')\n")
    return path


def reference_tokens(folder, prompts) -> list[list[int]]:
    """generate()'s greedy continuation of each prompt, without stopping at end-of-text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    replies = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
        replies.append(out[0, ids.shape[1] :].tolist())
    return replies


def test_vllm_greedy_tokens_equal_generate(folder):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
              kv_cache_memory_bytes=64 << 20)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    served = [list(output.outputs[0].token_ids) for output in outputs]
    assert served == reference_tokens(folder, PROMPTS)
    assert len({tuple(tokens) for tokens in served}) > 1  # the trained model's replies differ


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{path} answered {error.code}: {error.read().decode()[:500]}") from None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hf-scratch-gpt serve` on the untied model, on a free local port; stopped after the tests."""
    folder = trained_folder(tmp_path_factory.mktemp("served"), tied=False)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_scratch_gpt.cli", "serve", str(folder), "--port", str(port), "--dtype", "float32",
         "--served_model_name", "scratch", "--vllm_args", " ".join(["--max-model-len 256", *KV_CACHE])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {process.stderr.read()[-3000:]}")
            time.sleep(1)
    yield folder, port
    process.terminate()
    process.wait(timeout=60)


def test_server_completions_and_chat_equal_generate(server):
    from transformers import AutoTokenizer

    folder, port = server
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reply = post(port, "/v1/completions", {"model": "scratch", "prompt": PROMPTS[1], "max_tokens": NEW_TOKENS,
                                           "temperature": 0, "ignore_eos": True})
    assert reply["choices"][0]["text"] == tokenizer.decode(reference_tokens(folder, PROMPTS[1:2])[0])

    messages = [{"role": "user", "content": "Repeat the word.\n\nriver"}]
    chat_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    reply = post(port, "/v1/chat/completions", {"model": "scratch", "messages": messages, "max_tokens": NEW_TOKENS,
                                                "temperature": 0, "ignore_eos": True})
    expected = tokenizer.decode(reference_tokens(folder, [chat_prompt])[0])
    assert reply["choices"][0]["message"]["content"] == expected


def test_server_under_load_loses_no_request(server):
    """64 requests, 8 at a time: every one answered, each with generate()'s reply to its own prompt."""
    from transformers import AutoTokenizer

    folder, port = server
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS) % 3) for i in range(64)]
    distinct = sorted(set(prompts))
    expected = {p: tokenizer.decode(tokens) for p, tokens in zip(distinct, reference_tokens(folder, distinct))}

    def complete(prompt):
        body = {"model": "scratch", "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
        return post(port, "/v1/completions", body)["choices"][0]["text"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(complete, prompts))
    assert len(replies) == 64
    assert replies == [expected[p] for p in prompts]


def test_serve_refuses_a_head_size_vllm_cannot_compute(tmp_path, capsys):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("only vLLM's CPU attention lacks head sizes")
    config = ScratchGPTConfig(vocab_size=50, context_length=16, emb_dim=48, n_heads=2, n_layers=1)
    ScratchGPTForCausalLM(config).save_pretrained(tmp_path)
    alpaca_char_tokenizer(INSTRUCTIONS).save_pretrained(tmp_path)
    capsys.readouterr()
    assert main(["serve", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("hf-scratch-gpt serve: error: ") and "\n" not in error
    assert "heads of size 24" in error and "vLLM's CPU attention lacks" in error
