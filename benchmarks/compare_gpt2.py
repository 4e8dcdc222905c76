"""ScratchGPT against transformers' GPT2LMHeadModel, same weights, same process, alternating, in every precision.

    python benchmarks/compare_gpt2.py            # GPT-2 124M shape, 5-15 minutes on 2 cores
    python benchmarks/compare_gpt2.py --quick    # fewer repeats, 2-6 minutes
    python benchmarks/compare_gpt2.py --compile  # also torch.compile'd training and decoding (3-5 minutes more)

Prints the machine (CPU, caches, bf16 support), the fp32 and bf16 matmul peaks and the memory bandwidth
(a buffer four times the last-level cache) measured here, and the FLOP/s of a bf16 training step's matmuls
alone at their own shapes (the ceiling of MFU at this shape), then, each model in each mode (medians after
warm-up): training tokens/s (batch 2 x 256; fp32, bf16 autocast with fp32 weights, compiled with --compile) with
FLOP/s and MFU against the peak of the precision it computes in; greedy decode new tokens/s (prompt 32, batch
1 and 8; fp32 and bf16 weights, and with --compile a compiled forward on a static cache) with the weights'
bytes read per second against the bandwidth; the peak RSS of a training step in the recipes' default
precision (each model in its own subprocess). Each ratio compares our best mode with GPT-2's best mode. The
last line is `train_ratio=... decode_b1_ratio=... decode_b8_ratio=... rss_ratio=... precision=...` (ours /
GPT-2; RSS: lower is better; precision: the recipes' default here).
"""

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch
import torch._inductor.config
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt.recipes.runs import native_bf16
from machine import describe, last_level_cache_bytes

SHAPE = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
BATCH, SEQ = 2, 256


def build(which: str):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**SHAPE))  # dropout 0.1 everywhere, as released
    return gpt2 if which == "gpt2" else hf_scratch_gpt.from_gpt2(gpt2)


def optimizer(model):
    """Ours: what the package's recipes use (fused AdamW). GPT-2: torch's default AdamW."""
    fused = isinstance(model, hf_scratch_gpt.ScratchGPTForCausalLM)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)


def train_step(model, opt, batch, bf16: bool):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = model(batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def alternate(fns: dict, repeats: int, warmup: int) -> dict:
    """Run each function in turn, `warmup + repeats` rounds; median seconds of the measured rounds."""
    times = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            elapsed = fn()
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def training_flops_per_token(config) -> float:
    """6 x matmul parameters (LM head included) + attention scores and values, forward and backward."""
    d, layers = config.n_embd, config.n_layer
    matmul_params = layers * 12 * d * d + config.vocab_size * d
    return 6 * matmul_params + 12 * layers * SEQ * d


def matmul_peak(dtype: torch.dtype, seconds: float = 3.0) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * 2048**3 * runs / (time.perf_counter() - start)


def step_matmuls_flops(config, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of a training step's matmuls alone, at their own shapes: every linear layer's three products
    (forward, input and weight gradients; the LM head's included) and attention's six batched ones; the
    most MFU a step of this shape could reach on this machine if nothing else took time."""
    rows, d, heads = BATCH * SEQ, config.n_embd, config.n_head
    linears = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * config.n_layer + [(d, config.vocab_size)]
    shapes = [pair for fan_in, fan_out in linears for pair in (
        ((rows, fan_in), (fan_in, fan_out)), ((rows, fan_out), (fan_out, fan_in)), ((fan_out, rows), (rows, fan_in)))]
    queries, weights = (BATCH * heads, SEQ, d // heads), (BATCH * heads, SEQ, SEQ)
    keys_t, values = (BATCH * heads, d // heads, SEQ), queries  # q @ k.T, weights @ v; three times each in a step
    shapes += [(queries, keys_t), (weights, values)] * 3 * config.n_layer
    operands = [(torch.randn(a, dtype=dtype), torch.randn(b, dtype=dtype)) for a, b in shapes]
    flops = sum(2 * a.numel() * b.shape[-1] for a, b in operands)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for a, b in operands:
            torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times[1:])


def memory_bandwidth() -> tuple[float, int]:
    """Bytes/s reading a buffer four times the last-level cache (at least 1 GiB), so that none of it is cached."""
    size = max(4 * last_level_cache_bytes(), 2**30)
    data = torch.ones(size // 4)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return size / statistics.median(times[1:]), size


def decode(model, batch: int, new_tokens: int, compiled: bool = False):
    """Seconds for `new_tokens` greedy tokens after a 32-token prompt; compiled: with a static cache, as
    a compiled forward needs."""
    prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 32), generator=torch.Generator().manual_seed(1))
    cache = {"cache_implementation": "static"} if compiled else {}
    start = time.perf_counter()
    with torch.no_grad():
        # No end-of-text token: every run makes exactly `new_tokens` (min_new_tokens would instead add
        # a logits processor to every step, an overhead that is neither model's).
        output = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                eos_token_id=None, **cache)
    assert output.shape[1] == prompt.shape[1] + new_tokens
    return time.perf_counter() - start


def peak_rss_child(which: str, bf16: bool) -> None:
    """Build only the model measured (no converted-from copy), train 3 steps, report the peak."""
    config = GPT2Config(**SHAPE)
    if which == "gpt2":
        model = GPT2LMHeadModel(config)
    else:
        model = hf_scratch_gpt.ScratchGPTForCausalLM(hf_scratch_gpt.ScratchGPTConfig(
            vocab_size=config.vocab_size, context_length=config.n_positions, emb_dim=config.n_embd,
            n_heads=config.n_head, n_layers=config.n_layer, qkv_bias=True, bias=True))
    model.train()
    opt = optimizer(model)
    batch = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ))
    for _ in range(3):
        train_step(model, opt, batch, bf16)
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over the fork.
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}))


def peak_rss(which: str, bf16: bool) -> float:
    command = [sys.executable, __file__, "--rss-child", which] + (["--bf16"] if bf16 else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repeats.")
    parser.add_argument("--compile", action="store_true",
                        help="Also measure torch.compile'd training and decoding.")
    parser.add_argument("--rss-child", choices=["gpt2", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(args.rss_child, args.bf16)

    repeats, warmup, new_tokens = (3, 1, 48) if args.quick else (7, 2, 128)
    default_bf16 = native_bf16(on_cpu=True)
    print(describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, GPT-2 124M shape, recipes' default "
          f"precision here: {'bf16' if default_bf16 else 'fp32'}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    bandwidth, buffer = memory_bandwidth()
    print(f"matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; memory "
          f"bandwidth {bandwidth / 1e9:.1f} GB/s (a {buffer / 2**30:.1f} GiB buffer); measured here\n")

    models = {"gpt2": build("gpt2"), "ours": build("ours")}
    ceiling = step_matmuls_flops(models["gpt2"].config, torch.bfloat16)
    print(f"a bf16 training step's matmuls alone, at its shapes: {ceiling / 1e9:.0f} GFLOP/s = "
          f"{ceiling / peaks['bf16']:.0%} of the bf16 peak (the most MFU this shape reaches here)\n")
    batch = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    flops = training_flops_per_token(models["gpt2"].config) * BATCH * SEQ
    rows, train, decode_rate = [], {}, {1: {}, 8: {}}
    modes = ["fp32", "bf16"] + (["bf16 compiled"] if args.compile else [])
    for mode in modes:
        runnable = {n: torch.compile(m) if "compiled" in mode else m for n, m in models.items()}
        for model in models.values():
            model.train()
        opts = {name: optimizer(m) for name, m in models.items()}
        seconds = alternate({n: (lambda n=n, o=opts: train_step(runnable[n], o[n], batch, "bf16" in mode))
                             for n in models}, repeats, warmup + (2 if "compiled" in mode else 0))
        for name, s in seconds.items():
            train[name, mode] = BATCH * SEQ / s
            peak = peaks["bf16" if "bf16" in mode else "fp32"]
            rows.append((f"train tok/s, {mode}", name, BATCH * SEQ / s,
                         f"{flops / s / 1e9:.0f} GFLOP/s, MFU {flops / s / peak:.0%} of the {mode[:4]} peak"))
        del opts

    decode_modes = [(dtype, compiled) for dtype in (torch.float32, torch.bfloat16)
                    for compiled in ((False, True) if args.compile else (False,))]
    for dtype, compiled in decode_modes:
        mode = ("fp32" if dtype is torch.float32 else "bf16") + (" compiled" if compiled else "")
        for model in models.values():
            model.eval().to(dtype)
            if compiled:  # an instance attribute, deleted below: the class's forward comes back
                model.forward = torch.compile(model.forward, fullgraph=True)
        weight_bytes = sum(p.numel() * p.element_size() for p in models["gpt2"].parameters())
        for batch_size in (1, 8):
            # Compiled inference with frozen weights (constants to inductor, prepacked for oneDNN): torch's
            # recipe for CPU inference, and each model's fastest compiled decoding here.
            torch._dynamo.reset()  # both models' forwards share transformers' wrapper: keep under its recompile limit
            with torch._inductor.config.patch(freezing=compiled):
                seconds = alternate({n: (lambda n=n: decode(models[n], batch_size, new_tokens, compiled))
                                     for n in models}, max(1, repeats - 2), 2 if compiled else 1)
            for name, s in seconds.items():
                steps_per_s = new_tokens / s
                decode_rate[batch_size][name, mode] = batch_size * new_tokens / s
                rows.append((f"decode tok/s, batch {batch_size}, {mode} weights", name, batch_size * steps_per_s,
                             f"weights read {weight_bytes * steps_per_s / 1e9:.1f} GB/s = "
                             f"{weight_bytes * steps_per_s / bandwidth:.0%} of bandwidth"))
        for model in models.values():
            vars(model).pop("forward", None)

    rss = {name: peak_rss(name, default_bf16) for name in models}
    for name, mb in rss.items():
        rows.append((f"training step peak RSS (MB), {'bf16' if default_bf16 else 'fp32'}", name, mb, "own subprocess"))

    width = max(len(r[0]) for r in rows)
    for what, name, value, note in rows:
        print(f"{what:<{width}}  {name:<5} {value:>9.1f}   {note}")

    def best(rates: dict) -> dict:
        """Each model's best mode: (rate, mode)."""
        return {who: max((rate, mode) for (name, mode), rate in rates.items() if name == who) for who in models}

    ratios = {}
    for key, rates in (("train_ratio", train), ("decode_b1_ratio", decode_rate[1]),
                       ("decode_b8_ratio", decode_rate[8])):
        top = best(rates)
        ratios[key] = top["ours"][0] / top["gpt2"][0]
        print(f"{key}: ours {top['ours'][1]} against GPT-2 {top['gpt2'][1]}")
    ratios["rss_ratio"] = rss["ours"] / rss["gpt2"]
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items()) + f" precision={'bf16' if default_bf16 else 'fp32'}")


if __name__ == "__main__":
    main()
