"""Serving throughput: vLLM's OpenAI-compatible server (`hf-scratch-gpt serve`) against sequential generate().

Run in a virtualenv with vLLM and this package (see docs/serving.md): `python benchmarks/serve.py`. A model of
GPT-2 124M's shape (random weights: throughput does not depend on them) answers the same prompts three ways,
greedy and to a fixed length, in GPT-2's tokens: our model's generate() one prompt after another (what
`hf-scratch-gpt generate` does), GPT2LMHeadModel's generate() the same way (the yardstick every benchmark here
prints), and the vLLM server with `--concurrency` clients at a time. Prints the machine, requests/s and generated
tokens/s of each, and ends `serve_throughput_ratio=` (vLLM's tokens/s over our sequential generate()'s).
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from machine import describe
from transformers import GPT2Config, GPT2LMHeadModel

from hf_scratch_gpt import from_gpt2
from hf_scratch_gpt.tokenization import gpt2_tokenizer

GPT2_FILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def sequential(model, prompts, new_tokens: int) -> float:
    """Seconds for generate() to answer each prompt in turn."""
    start = time.perf_counter()
    with torch.no_grad():
        for ids in prompts:
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)
    return time.perf_counter() - start


def served(folder, prompts: list[str], new_tokens: int, concurrency: int) -> float:
    """Seconds for the vLLM server to answer every prompt, `concurrency` requests at a time (startup excluded)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hf_scratch_gpt.cli", "serve", str(folder), "--port", str(port),
                               "--dtype", "float32", "--served_model_name", "bench",
                               "--vllm_args", f"--kv-cache-memory-bytes {2 << 30} --max-model-len 1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("the vLLM server failed to start; run `hf-scratch-gpt serve` by hand to see why")
                time.sleep(1)

        def complete(prompt):
            body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                assert json.load(response)["usage"]["completion_tokens"] == new_tokens

        complete(prompts[0])  # warm up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(complete, prompts))
        return time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokenizer", type=Path, default=GPT2_FILES, help="A folder of GPT-2's encoder.json and "
                        "vocab.bpe (default: ../shared/data/gpt2-tokenizer).")
    args = parser.parse_args()
    print(describe())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.requests} requests of "
          f"{args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens each, greedy, fp32")

    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name)
    tokenizer = gpt2_tokenizer(args.tokenizer / "encoder.json", args.tokenizer / "vocab.bpe")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config()).eval()
    ours = from_gpt2(gpt2).eval()
    ours.save_pretrained(path)
    tokenizer.save_pretrained(path)
    words = "every effort moves you said the painter to the critic as the light fell across the studio ".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(args.prompt_tokens)) for i in range(args.requests)]
    texts = [tokenizer.decode(tokenizer(text).input_ids[: args.prompt_tokens]) for text in texts]
    ids = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
    assert all(x.shape[1] == args.prompt_tokens for x in ids)  # what the server is sent, to the token

    generated = args.requests * args.new_tokens
    results = {}
    for name, seconds in (("generate, ours", sequential(ours, ids, args.new_tokens)),
                          ("generate, GPT2LMHeadModel", sequential(gpt2, ids, args.new_tokens)),
                          (f"vLLM server, {args.concurrency} at a time", served(path, texts, args.new_tokens,
                                                                                args.concurrency))):
        results[name] = seconds
        print(f"{name:<32} {args.requests / seconds:7.2f} requests/s  {generated / seconds:8.1f} tokens/s")
    ours_seconds, gpt2_seconds, vllm_seconds = results.values()
    print(f"generate_ratio_vs_gpt2={gpt2_seconds / ours_seconds:.2f}")
    print(f"serve_throughput_ratio={ours_seconds / vllm_seconds:.2f}")


if __name__ == "__main__":
    main()
