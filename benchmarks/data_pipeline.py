"""Preparing a pretraining corpus: ours (datasets + the Arrow token cache) against nanoGPT's way, same corpus, same run.

    python benchmarks/data_pipeline.py --mb 100             # about 1 minute on 2 cores
    python benchmarks/data_pipeline.py --mb 100 --mb 1000   # two sizes: does memory grow with the corpus?

A synthetic JSON Lines corpus of N MB is cut from the texts in ../shared/data (random slices, so no two
documents are alike) and prepared, each way in a fresh process whose peak memory (the whole process tree, sampled)
is recorded:
- ours: `build_lm_dataset(path, max_length=1024)` with GPT-2's tokenizer, as `pretrain` does when given a
  tokenizer (the JSON Lines file tokenized where it lies), in a fresh datasets cache, then the first training batch
  (16 windows) through a DataLoader; then again on the same cache (a second run);
- nanoGPT's `prepare.py` way: tiktoken with GPT-2's BPE built from `encoder.json` / `vocab.bpe`, 2 processes,
  uint16 tokens written to one flat file read back as an `np.memmap`, a batch of random-offset windows.
Both must give the same tokens (checked). It also times drawing a batch against a training step of the default
pretraining model (`data_wait` below; the recipe logs the same share as `data_wait_share`).
The last line is `prep_ratio=<ours/baseline MB/s> rss_ratio=<ours/baseline peak RSS>` for the largest size.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from machine import describe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_FILES = DATA / "gpt2-tokenizer"


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Documents of 1-8 kB sliced at random from the shared texts, until the file holds `megabytes` MB."""
    texts = [(DATA / name).read_text(encoding="utf-8") for name in ("tinyshakespeare.txt", "the-verdict.txt")]
    texts.append("\n\n".join(r["output"] for r in json.loads((DATA / "instruction-data.json").read_text())))
    rng = random.Random(seed)
    target, written = megabytes * 10**6, 0
    with open(path, "w", encoding="utf-8") as file:
        while written < target:
            text = rng.choice(texts)
            start = rng.randrange(len(text) - 8000)
            line = json.dumps({"text": text[start : start + rng.randrange(1000, 8000)]}) + "\n"
            file.write(line)
            written += len(line.encode())


OURS = """
import json, sys, time
from torch.utils.data import DataLoader
from transformers import default_data_collator
from hf_scratch_gpt.corpus import build_lm_dataset
from hf_scratch_gpt.tokenization import gpt2_tokenizer
start = time.perf_counter()
corpus_path, files = sys.argv[1], sys.argv[2]
tokenizer = gpt2_tokenizer(f"{files}/encoder.json", f"{files}/vocab.bpe")
windows = build_lm_dataset(corpus_path, tokenizer, max_length=1024, validation_fraction=0.1)
prepared = time.perf_counter()
batch = next(iter(DataLoader(windows["train"], batch_size=16, shuffle=True, collate_fn=default_data_collator)))
first_batch = time.perf_counter()
stream = windows["train"].format["format_kwargs"]["transform"].stream
print(json.dumps({"prepare_s": prepared - start, "first_batch_s": first_batch - start, "tokens": len(stream),
                  "head": stream[:100_000].tolist(), "tail": stream[len(stream) - 100_000 :].tolist(),
                  "batch_shape": list(batch["input_ids"].shape)}))
"""

NANOGPT = """
import json, sys, time
from multiprocessing import Pool
import numpy as np, tiktoken, torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
start = time.perf_counter()

corpus_path, files, out = sys.argv[1], sys.argv[2], sys.argv[3]
PATTERN = r\"\"\"'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+\"\"\"

def encoder():
    ranks = data_gym_to_mergeable_bpe_ranks(f"{files}/vocab.bpe", f"{files}/encoder.json")
    return tiktoken.Encoding("gpt2", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})

def init():
    global enc
    enc = encoder()

def process(lines):
    ids = []
    for line in lines:
        ids.extend(enc.encode_ordinary(json.loads(line)["text"]))
        ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint16)

def chunks(path, size=256):
    with open(path, encoding="utf-8") as file:
        batch = []
        for line in file:
            batch.append(line)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

if __name__ == "__main__":
    with Pool(2, initializer=init) as pool, open(out, "wb") as file:
        for ids in pool.imap(process, chunks(corpus_path)):
            file.write(ids.tobytes())
    data = np.memmap(out, dtype=np.uint16, mode="r")
    prepared = time.perf_counter()
    ix = torch.randint(len(data) - 1024, (16,))
    x = torch.stack([torch.from_numpy(data[i : i + 1024].astype(np.int64)) for i in ix])
    first_batch = time.perf_counter()
    print(json.dumps({"prepare_s": prepared - start, "first_batch_s": first_batch - start, "tokens": len(data),
                      "head": data[:100_000].tolist(), "tail": data[len(data) - 100_000 :].tolist(),
                      "batch_shape": list(x.shape)}))
"""


def run_measured(code: str, *args: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh Python; its JSON result plus the peak memory of its process tree: the sum of the
    processes' proportional set sizes (PSS: a page that forked workers share with their parent counts once, as
    the sum of their RSS would count it in each), and its anonymous part (what is not a mapped file's pages:
    only the process can give it back, where the kernel drops a file's clean pages when it needs the room)."""
    process = psutil.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, **(env or {})})
    peaks = {"pss": 0, "anon": 0}

    def sample():
        # Reading a process's memory map costs ~3 ms, every 50 ms, for each process: at the lowest priority, so
        # that the sampler takes no CPU from the preparation it measures (it still samples when a core is free).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while process.poll() is None:
            pss = anon = 0
            try:
                for p in [process, *process.children(recursive=True)]:
                    whole, anonymous = _proportional(p.pid)
                    pss, anon = pss + whole, anon + anonymous
            except (psutil.Error, OSError, KeyError):
                pass
            peaks["pss"], peaks["anon"] = max(peaks["pss"], pss), max(peaks["anon"], anon)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = process.communicate()
    sampler.join()
    if process.returncode:
        sys.exit(f"benchmark step failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss": peaks["pss"], "peak_anon": peaks["anon"]}


def _proportional(pid: int) -> tuple[int, int]:
    """A process's proportional set size and its anonymous part, in bytes (`/proc/PID/smaps_rollup`)."""
    rows = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(rows["Pss"].split()[0]) * 1024, int(rows["Pss_Anon"].split()[0]) * 1024


DRAW = """
import statistics, sys, time
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.corpus import build_lm_dataset
from hf_scratch_gpt.recipes.pretraining import SMALL_MODEL
from hf_scratch_gpt.tokenization import gpt2_tokenizer
corpus_path, files = sys.argv[1], sys.argv[2]
tokenizer = gpt2_tokenizer(f"{files}/encoder.json", f"{files}/vocab.bpe")
train = build_lm_dataset(corpus_path, tokenizer, max_length=SMALL_MODEL["context_length"])["train"]
loader = iter(DataLoader(train, batch_size=16, shuffle=True, collate_fn=default_data_collator))
draws = []
for _ in range(200):
    start = time.perf_counter(); batch = next(loader); draws.append(time.perf_counter() - start)
model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=len(tokenizer), **SMALL_MODEL))
optimizer = torch.optim.AdamW(model.parameters(), fused=True)
steps = []
for _ in range(12):
    start = time.perf_counter()
    model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
    steps.append(time.perf_counter() - start)
print(statistics.median(draws), statistics.median(steps[2:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, action="append", help="corpus size in MB (repeat for several)")
    parser.add_argument("--work", default="/tmp/hf_scratch_gpt_data_bench", help="scratch folder (emptied)")
    args = parser.parse_args()
    sizes = args.mb or [100]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(describe())
    print(f"tokenizer: GPT-2 BPE from {GPT2_FILES}; windows of 1024 tokens; batch 16\n")
    header = (f"{'corpus':>8} | {'way':<16} | {'prepare s':>9} | {'MB/s':>6} | {'Mtok/s':>6} | {'1st batch s':>11} | "
              f"{'peak PSS MB':>11} | {'of it anon MB':>13}")
    print(header)
    print("-" * len(header))
    results = {}
    for megabytes in sizes:
        corpus = work / f"corpus-{megabytes}MB.jsonl"
        make_corpus(corpus, megabytes)
        cache = {"HF_DATASETS_CACHE": str(work / f"cache-{megabytes}"), "HF_HUB_OFFLINE": "1"}
        rows = {"ours": run_measured(OURS, str(corpus), str(GPT2_FILES), env=cache),
                "ours, 2nd run": run_measured(OURS, str(corpus), str(GPT2_FILES), env=cache),
                "nanoGPT way": run_measured(NANOGPT, str(corpus), str(GPT2_FILES), str(work / "train.bin"))}
        same = all(rows["ours"][k] == rows["nanoGPT way"][k] for k in ("tokens", "head", "tail"))
        for way, row in rows.items():
            print(f"{megabytes:>6}MB | {way:<16} | {row['prepare_s']:>9.1f} | {megabytes / row['prepare_s']:>6.1f} | "
                  f"{row['tokens'] / row['prepare_s'] / 1e6:>6.2f} | {row['first_batch_s']:>11.1f} | "
                  f"{row['peak_pss'] / 2**20:>11.0f} | {row['peak_anon'] / 2**20:>13.0f}")
        print(f"{'':>8}   same tokens both ways: {same} ({rows['ours']['tokens']:,} tokens)")
        if not same:
            sys.exit("the two preparations disagree on the tokens")
        results[megabytes] = rows
        shutil.rmtree(work / f"cache-{megabytes}", ignore_errors=True)
        (work / "train.bin").unlink(missing_ok=True)

    draw, step = map(float, subprocess.run([sys.executable, "-c", DRAW, str(work / f"corpus-{sizes[0]}MB.jsonl"),
                                            str(GPT2_FILES)], capture_output=True, text=True, check=True,
                                           env={**os.environ, "HF_DATASETS_CACHE": str(work / "cache-draw")}
                                           ).stdout.split())
    print(f"\ndata_wait: drawing a batch of 16 x 128 takes {draw * 1e3:.2f} ms, a training step of the default "
          f"pretraining model {step * 1e3:.0f} ms: {draw / step:.2%} of a step")
    if len(sizes) > 1:
        small, large = results[min(sizes)]["ours"], results[max(sizes)]["ours"]
        growth = large["peak_pss"] / small["peak_pss"]
        print(f"memory growth, {min(sizes)} MB -> {max(sizes)} MB: peak PSS x{growth:.2f}, "
              f"anonymous x{large['peak_anon'] / small['peak_anon']:.2f}")
    largest = results[max(sizes)]
    mb_per_s = {way: max(sizes) / row["prepare_s"] for way, row in largest.items()}
    print(f"prep_ratio={mb_per_s['ours'] / mb_per_s['nanoGPT way']:.2f} "
          f"rss_ratio={largest['ours']['peak_pss'] / largest['nanoGPT way']['peak_pss']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
