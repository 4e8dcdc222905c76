"""ScratchGPT against transformers' GPT2LMHeadModel, same weights, same process, alternating, in every precision.

    python benchmarks/compare_gpt2.py            # GPT-2 124M shape, 5-15 minutes on 2 cores
    python benchmarks/compare_gpt2.py --quick    # fewer repeats, 2-6 minutes
    python benchmarks/compare_gpt2.py --compile  # also torch.compile'd training and decoding (3-5 minutes more)
    python benchmarks/compare_gpt2.py --device cuda --compile  # on a GPU: batch 16 x 1024, flash attention too

Prints the machine (CPU, caches, bf16 support; the GPU on CUDA), the fp32 and bf16 matmul peaks and the memory
bandwidth (a buffer far larger than the last-level cache) measured here, and the FLOP/s of a bf16 training
step's matmuls alone at their own shapes (the ceiling of MFU at this shape), then, each model in each mode
(medians after warm-up): training tokens/s (batch 2 x 256 on the CPU; fp32, bf16 autocast with fp32 weights,
with sdpa and, on CUDA where `flash_attn` is installed, flash attention; compiled with --compile) with FLOP/s and
MFU against the peak of the precision it computes in; greedy decode new tokens/s (prompt 32, batch 1 and 8; fp32
and bf16 weights, and with --compile a compiled forward on a static cache: generate()'s own CUDA-graph
compilation on CUDA) with the weights' bytes read per second against the bandwidth; the peak memory of a
training step in the recipes' default precision (each model in its own subprocess: RSS on the CPU, allocated GPU
memory on CUDA). Each ratio compares our best mode with GPT-2's best mode. The last line is
`train_ratio=... decode_b1_ratio=... decode_b8_ratio=... rss_ratio=... precision=...` (ours / GPT-2; memory:
lower is better, `gpu_memory_ratio` on CUDA; precision: the recipes' default here, timed at this shape on a CPU
with native bf16 as the recipes time it).
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

import torch
import torch._inductor.config
from machine import describe, last_level_cache_bytes
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt import kernels_scratch_gpt as kernels
from hf_scratch_gpt.recipes.arguments import native_bf16
from hf_scratch_gpt.recipes.precision import measured_bf16

SHAPE = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
TRAIN_BATCH = {"cpu": (2, 256), "cuda": (16, 1024)}  # rows x tokens: what each device trains on in reasonable time


def build(which: str):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**SHAPE))  # dropout 0.1 everywhere, as released
    return gpt2 if which == "gpt2" else hf_scratch_gpt.from_gpt2(gpt2)


def optimizer(model):
    """Ours: what the package's recipes use (fused AdamW). GPT-2: torch's default AdamW."""
    fused = isinstance(model, hf_scratch_gpt.ScratchGPTForCausalLM)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)


def synchronize(device: torch.device):
    """Wait for the device's queued work before reading a clock: CUDA calls return before their kernels end."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def train_step(model, opt, batch, bf16: bool):
    start = time.perf_counter()
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    synchronize(batch.device)
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


def training_flops_per_token(config, seq: int) -> float:
    """6 x matmul parameters (LM head included) + attention scores and values, forward and backward."""
    d, layers = config.n_embd, config.n_layer
    matmul_params = layers * 12 * d * d + config.vocab_size * d
    return 6 * matmul_params + 12 * layers * seq * d


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 3.0) -> float:
    size = 2048 if device.type == "cpu" else 8192  # a GPU needs a large product to be busy
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        synchronize(device)
        runs += 10
    return 2 * size**3 * runs / (time.perf_counter() - start)


def step_matmuls_flops(config, dtype: torch.dtype, batch: int, seq: int, device: torch.device,
                       repeats: int = 5) -> float:
    """FLOP/s of a training step's matmuls alone, at their own shapes: every linear layer's three products
    (forward, input and weight gradients; the LM head's included) and attention's six batched ones; the
    most MFU a step of this shape could reach on this machine if nothing else took time."""
    rows, d, heads = batch * seq, config.n_embd, config.n_head
    linears = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * config.n_layer + [(d, config.vocab_size)]
    shapes = [pair for fan_in, fan_out in linears for pair in (
        ((rows, fan_in), (fan_in, fan_out)), ((rows, fan_out), (fan_out, fan_in)), ((fan_out, rows), (rows, fan_in)))]
    queries, weights = (batch * heads, seq, d // heads), (batch * heads, seq, seq)
    keys_t, values = (batch * heads, d // heads, seq), queries  # q @ k.T, weights @ v; three times each in a step
    shapes += [(queries, keys_t), (weights, values)] * 3 * config.n_layer
    operands = [(torch.randn(a, dtype=dtype, device=device), torch.randn(b, dtype=dtype, device=device))
                for a, b in shapes]
    flops = sum(2 * a.numel() * b.shape[-1] for a, b in operands)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for a, b in operands:
            torch.matmul(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times[1:])


def memory_bandwidth(device: torch.device) -> tuple[float, int]:
    """Bytes/s reading a buffer four times the CPU's last-level cache (at least 1 GiB; 4 GiB on a GPU), so
    that none of it is cached."""
    size = max(4 * last_level_cache_bytes(), 2**30) if device.type == "cpu" else 2**32
    data = torch.ones(size // 4, device=device)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        data.sum()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return size / statistics.median(times[1:]), size


def decode(model, batch: int, new_tokens: int, compiled: bool = False):
    """Seconds for `new_tokens` greedy tokens after a 32-token prompt; compiled: with a static cache, as
    a compiled forward needs (on CUDA, generate() then compiles the forward itself, with CUDA graphs)."""
    prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 32), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(model.device)
    cache = {"cache_implementation": "static"} if compiled else {}
    start = time.perf_counter()
    with torch.no_grad():
        # No end-of-text token: every run makes exactly `new_tokens` (min_new_tokens would instead add
        # a logits processor to every step, an overhead that is neither model's).
        output = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                eos_token_id=None, **cache)
    synchronize(model.device)
    assert output.shape[1] == prompt.shape[1] + new_tokens
    return time.perf_counter() - start


def peak_memory_child(which: str, bf16: bool, device: torch.device) -> None:
    """Build only the model measured (no converted-from copy), train 3 steps, report the peak: resident
    memory on the CPU, allocated GPU memory on CUDA."""
    config = GPT2Config(**SHAPE)
    if which == "gpt2":
        model = GPT2LMHeadModel(config)
    else:
        model = hf_scratch_gpt.ScratchGPTForCausalLM(hf_scratch_gpt.ScratchGPTConfig(
            vocab_size=config.vocab_size, context_length=config.n_positions, emb_dim=config.n_embd,
            n_heads=config.n_head, n_layers=config.n_layer, qkv_bias=True, bias=True))
    model.to(device).train()
    opt = optimizer(model)
    batch = torch.randint(0, SHAPE["vocab_size"], TRAIN_BATCH[device.type], device=device)
    for _ in range(3):
        train_step(model, opt, batch, bf16)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over the fork.
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        peak = int(status["VmHWM"].split()[0]) / 1024
    print(json.dumps({"peak_mb": peak}))


def peak_memory(which: str, bf16: bool, device: torch.device) -> float:
    command = [sys.executable, __file__, "--memory-child", which, "--device", device.type] + (["--bf16"] * bf16)
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def attention_backends(device: torch.device) -> list[str]:
    """transformers' attention implementations worth training with here: sdpa everywhere, flash attention
    on CUDA where its package is installed (nothing can be fetched from the Hub here)."""
    flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    return ["sdpa"] + (["flash_attention_2"] if flash else [])


def kernels_chosen() -> str:
    """Which kernel our linear layers kept for each kind of decoding call (`KernelChoice`): the choice is
    made by timing on this machine, so it is part of what a run measured."""
    chosen = {}
    for (fan_in, fan_out, dtype, rows, _), choice in sorted(kernels._CHOICES.items(), key=str):
        name = choice.chosen.__name__.removesuffix("_linear") if choice.chosen else "undecided"
        chosen.setdefault(f"{str(dtype).removeprefix('torch.')} x {rows} rows", []).append(
            f"{fan_in}->{fan_out} {name}")
    return "kernels our linear layers kept:\n" + "\n".join(f"  {kind}: {', '.join(layers)}"
                                                          for kind, layers in chosen.items()) + "\n"


def recipes_precision(model, rows: int, seq: int, device: torch.device) -> tuple[bool, str]:
    """What the recipes train `model` in at this shape here, and why: timed on a CPU with native bf16 (cached
    per CPU and shape, as `Run` does), the hardware's flag elsewhere."""
    on_cpu = device.type == "cpu"
    if on_cpu and native_bf16(on_cpu):
        return measured_bf16(model, rows, seq)
    return native_bf16(on_cpu), "the hardware's bf16 support"


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return describe()
    gpu = torch.cuda.get_device_properties(device)
    return (f"{describe()}\ngpu: {gpu.name}, {gpu.multi_processor_count} SMs, {gpu.total_memory / 2**30:.0f} GiB, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, CUDA {torch.version.cuda}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repeats.")
    parser.add_argument("--compile", action="store_true",
                        help="Also measure torch.compile'd training and decoding.")
    parser.add_argument("--device", choices=sorted(TRAIN_BATCH), default="cpu", help="Where both models run.")
    parser.add_argument("--memory-child", choices=["gpt2", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_child:
        return peak_memory_child(args.memory_child, args.bf16, device)

    repeats, warmup, new_tokens = (3, 1, 48) if args.quick else (7, 2, 128)
    train_rows, seq = TRAIN_BATCH[device.type]
    print(describe_device(device))
    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    bandwidth, buffer = memory_bandwidth(device)
    print(f"matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; memory "
          f"bandwidth {bandwidth / 1e9:.1f} GB/s (a {buffer / 2**30:.1f} GiB buffer); measured here\n")

    models = {name: build(name).to(device) for name in ("gpt2", "ours")}
    default_bf16, why = recipes_precision(models["ours"], train_rows, seq, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, GPT-2 124M shape on {device.type}, "
          f"recipes' default precision here: {'bf16' if default_bf16 else 'fp32'} ({why})\n")
    ceiling = step_matmuls_flops(models["gpt2"].config, torch.bfloat16, train_rows, seq, device)
    print(f"a bf16 training step's matmuls alone, at its shapes: {ceiling / 1e9:.0f} GFLOP/s = "
          f"{ceiling / peaks['bf16']:.0%} of the bf16 peak (the most MFU this shape reaches here)\n")
    batch = torch.randint(0, SHAPE["vocab_size"], (train_rows, seq), generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)
    tokens = batch.numel()
    flops = training_flops_per_token(models["gpt2"].config, seq) * tokens
    rows, train, decode_rate = [], {}, {1: {}, 8: {}}
    # (name, bf16, attention implementation, compiled)
    modes = [("fp32", False, "sdpa", False)] + [
        ("bf16" + ("" if attention == "sdpa" else f" {attention}"), True, attention, False)
        for attention in attention_backends(device)] + ([("bf16 compiled", True, "sdpa", True)] if args.compile else [])
    for mode, bf16, attention, compiled in modes:
        for model in models.values():
            model.set_attn_implementation(attention)
            model.train()
        runnable = {n: torch.compile(m) if compiled else m for n, m in models.items()}
        opts = {name: optimizer(m) for name, m in models.items()}
        seconds = alternate({n: (lambda n=n, o=opts: train_step(runnable[n], o[n], batch, bf16))
                             for n in models}, repeats, warmup + (2 if compiled else 0))
        for name, s in seconds.items():
            train[name, mode] = tokens / s
            peak = peaks["bf16" if bf16 else "fp32"]
            rows.append((f"train tok/s, batch {train_rows} x {seq}, {mode}", name, tokens / s,
                         f"{flops / s / 1e9:.0f} GFLOP/s, MFU {flops / s / peak:.0%} of the {mode[:4]} peak"))
        del opts
    for model in models.values():
        model.set_attn_implementation("sdpa")

    decode_modes = [(dtype, compiled) for dtype in (torch.float32, torch.bfloat16)
                    for compiled in ((False, True) if args.compile else (False,))]
    for dtype, compiled in decode_modes:
        mode = ("fp32" if dtype is torch.float32 else "bf16") + (" compiled" if compiled else "")
        # On the CPU we compile the forward; on CUDA generate() compiles it itself for a static cache.
        own_compile = compiled and device.type == "cpu"
        for model in models.values():
            model.eval().to(dtype)
            if own_compile:  # an instance attribute, deleted below: the class's forward comes back
                model.forward = torch.compile(model.forward, fullgraph=True)
        weight_bytes = sum(p.numel() * p.element_size() for p in models["gpt2"].parameters())
        for batch_size in (1, 8):
            # Compiled CPU inference with frozen weights (constants to inductor, prepacked for oneDNN): torch's
            # recipe for CPU inference, and each model's fastest compiled decoding there.
            torch._dynamo.reset()  # both models' forwards share transformers' wrapper: keep under its recompile limit
            with torch._inductor.config.patch(freezing=own_compile):
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

    print(kernels_chosen())

    memory = {name: peak_memory(name, default_bf16, device) for name in models}
    memory_kind = "RSS" if device.type == "cpu" else "GPU memory allocated"
    for name, mb in memory.items():
        rows.append((f"training step peak {memory_kind} (MB), {'bf16' if default_bf16 else 'fp32'}", name, mb,
                     "own subprocess"))

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
    ratios["rss_ratio" if device.type == "cpu" else "gpu_memory_ratio"] = memory["ours"] / memory["gpt2"]
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items()) + f" precision={'bf16' if default_bf16 else 'fp32'}")


if __name__ == "__main__":
    main()
