"""The recipes' default precision on a CPU that computes bf16 natively, chosen by timing the run's own training
step: bf16 autocast only where it is faster than fp32 there.

A CPU flag (AMX, AVX512-BF16) says that bf16 is computed natively, not that autocast pays at a model's shape: at
GPT-2's 768 dimensions bf16 trains ~1.9x faster than fp32 on an AMX Xeon; at 128 dimensions it was 15% slower there
(until training took its attention kernel by timing: now 25% faster) and 5% faster on a Zen 4
(benchmarks/RESULTS.md). The answer is kept per machine, torch release and shape in
`~/.cache/hf-scratch-gpt/precision.json`, so that a run (and its resumption) measures once; the model's code is
part of the key (a change to it, such as its attention's choice of kernel, can change the answer).
"""

import hashlib
import inspect
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationMixin

STEPS = 3  # timed training steps in each precision, after one untimed
MARGIN = 0.95  # bf16 is chosen only if its step takes at most 95% of fp32's: at a tie, fp32 (exact) stays
TOKENS = 8192  # the probe's batch holds at most this many tokens: its rows are the run's, up to that


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf-scratch-gpt" / "precision.json"


def measured_bf16(model, rows: int, length: int) -> tuple[bool, str]:
    """Whether a training step of `model` on `rows` x `length` tokens is faster in bf16 autocast than in fp32 on
    this machine, and why, in words for the model card."""
    rows = max(1, min(rows, TOKENS // length))
    config = model.config
    key = " | ".join([_cpu_name(), f"torch {torch.__version__}", f"code {_code_fingerprint(model)}",
                      type(model).__name__, f"{config.vocab_size}x{config.emb_dim}x{config.n_layers}x{config.n_heads}",
                      f"trainable {sum(p.numel() for p in model.parameters() if p.requires_grad)}", f"{rows}x{length}"])
    known = _read_cache()
    if key not in known:
        fp32, bf16 = _step_seconds(model, rows, length)
        known[key] = {"fp32_ms": round(fp32 * 1e3, 2), "bf16_ms": round(bf16 * 1e3, 2)}
        _write_cache(known)
    times = known[key]
    bf16 = times["bf16_ms"] <= MARGIN * times["fp32_ms"]
    return bf16, (f"timed on this CPU: a training step of {rows} x {length} tokens took {times['bf16_ms']:.0f} ms in "
                  f"bf16 autocast, {times['fp32_ms']:.0f} ms in fp32")


def _step_seconds(model, rows: int, length: int) -> tuple[float, float]:
    """Median seconds of a forward and backward pass in fp32 and in bf16 autocast, alternating; the model's
    gradients, mode and the random state are left as they were."""
    was_training, times = model.training, {False: [], True: []}
    model.train()
    with torch.random.fork_rng():
        ids = torch.randint(0, model.config.vocab_size, (rows, length), device=model.device)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT's wrapper
        causal = isinstance(base, GenerationMixin)  # else a classifier, one label per row
        labels = ids if causal else torch.zeros(rows, dtype=torch.long, device=model.device)
        for step in range(STEPS + 1):
            for autocast in (False, True):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                if step:
                    times[autocast].append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return statistics.median(times[False]), statistics.median(times[True])


def _code_fingerprint(model) -> str:
    """A short hash of the files the model's forward and backward run (its model file and the speed machinery
    beside it), wherever they were loaded from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_file = Path(inspect.getfile(type(base)))
    digest = hashlib.sha256()
    for path in sorted(model_file.parent.glob("*_scratch_gpt.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _read_cache() -> dict:
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_cache(known: dict) -> None:
    """Replace the cache whole (processes may read it at the same time); where it cannot be written, do without."""
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache_file().parent, prefix=".precision.")
        with os.fdopen(handle, "w") as file:
            json.dump(known, file, indent=1)
        os.replace(temporary, cache_file())
    except OSError:
        pass


def _cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
