"""ScratchGPT against transformers' GPT2LMHeadModel, same weights, same process, alternating.

    python benchmarks/compare_gpt2.py            # GPT-2 124M shape, about 8 minutes on 2 cores
    python benchmarks/compare_gpt2.py --quick    # fewer repeats, under 3 minutes

Measures (medians after warm-up): training tokens/s (batch 2 x 256) with each model's recommended
settings and with identical plain settings; greedy decode new tokens/s (prompt 32, batch 1 and 8);
peak RSS of a training step (each model in its own subprocess); achieved FLOP/s and MFU against a
matmul peak measured here; decode memory traffic against a bandwidth measured here. The last line is
`train_ratio=... decode_b1_ratio=... decode_b8_ratio=... rss_ratio=...` (ours / GPT-2; RSS: lower is better).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt

SHAPE = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
BATCH, SEQ = 2, 256


def build(which: str):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**SHAPE))  # dropout 0.1 everywhere, as released
    return gpt2 if which == "gpt2" else hf_scratch_gpt.from_gpt2(gpt2)


def optimizer(model, recommended: bool):
    """Ours: what the package's recipes use (fused AdamW). GPT-2 and plain: torch's default AdamW."""
    fused = recommended and isinstance(model, hf_scratch_gpt.ScratchGPTForCausalLM)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)


def train_step(model, opt, batch):
    start = time.perf_counter()
    model(batch, labels=batch).loss.backward()
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


def matmul_peak(seconds: float = 3.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * 2048**3 * runs / (time.perf_counter() - start)


def memory_bandwidth() -> float:
    data = torch.randn(64 * 1024 * 1024)  # 256 MB: far beyond the caches
    data.sum()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / statistics.median(times)


def decode(model, batch: int, new_tokens: int):
    prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 32), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    with torch.no_grad():
        # No end-of-text token: every run makes exactly `new_tokens` (min_new_tokens would instead add
        # a logits processor to every step, an overhead that is neither model's).
        output = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                eos_token_id=None)
    assert output.shape[1] == prompt.shape[1] + new_tokens
    return time.perf_counter() - start


def peak_rss_child(which: str) -> None:
    """Build only the model measured (no converted-from copy), train 3 steps, report the peak."""
    config = GPT2Config(**SHAPE)
    if which == "gpt2":
        model = GPT2LMHeadModel(config)
    else:
        model = hf_scratch_gpt.ScratchGPTForCausalLM(hf_scratch_gpt.ScratchGPTConfig(
            vocab_size=config.vocab_size, context_length=config.n_positions, emb_dim=config.n_embd,
            n_heads=config.n_head, n_layers=config.n_layer, qkv_bias=True, bias=True))
    model.train()
    opt = optimizer(model, recommended=True)
    batch = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ))
    for _ in range(3):
        train_step(model, opt, batch)
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over the fork.
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}))


def peak_rss(which: str) -> float:
    result = subprocess.run([sys.executable, __file__, "--rss-child", which], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repeats: under 3 minutes.")
    parser.add_argument("--rss-child", choices=["gpt2", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(args.rss_child)

    repeats, warmup, new_tokens = (3, 1, 48) if args.quick else (7, 2, 128)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, GPT-2 124M shape")
    peak, bandwidth = matmul_peak(), memory_bandwidth()
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s, memory bandwidth {bandwidth / 1e9:.1f} GB/s (measured here)")

    models = {"gpt2": build("gpt2"), "ours": build("ours")}
    batch = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    rows = []
    flops = training_flops_per_token(models["gpt2"].config) * BATCH * SEQ
    train = {}
    for setting in ("recommended", "plain"):
        for model in models.values():
            model.train()
        opts = {name: optimizer(m, recommended=setting == "recommended") for name, m in models.items()}
        seconds = alternate({n: (lambda n=n, o=opts: train_step(models[n], o[n], batch)) for n in models}, repeats, warmup)
        train[setting] = {n: BATCH * SEQ / s for n, s in seconds.items()}
        for name, s in seconds.items():
            rows.append((f"train tok/s ({setting})", name, BATCH * SEQ / s,
                         f"{flops / s / 1e9:.0f} GFLOP/s, MFU {flops / s / peak:.0%}"))
        del opts

    param_bytes = sum(p.numel() * p.element_size() for p in models["gpt2"].parameters())
    decode_rate = {}
    for batch_size in (1, 8):
        for model in models.values():
            model.eval()
        seconds = alternate({n: (lambda n=n: decode(models[n], batch_size, new_tokens)) for n in models},
                            max(1, repeats - 2), 1)
        decode_rate[batch_size] = {n: batch_size * new_tokens / s for n, s in seconds.items()}
        for name, s in seconds.items():
            steps_per_s = new_tokens / s
            rows.append((f"decode tok/s (batch {batch_size})", name, decode_rate[batch_size][name],
                         f"weights read {param_bytes * steps_per_s / 1e9:.1f} GB/s = "
                         f"{param_bytes * steps_per_s / bandwidth:.0%} of bandwidth"))

    rss = {name: peak_rss(name) for name in models}
    for name, mb in rss.items():
        rows.append(("training step peak RSS (MB)", name, mb, "own subprocess"))

    width = max(len(r[0]) for r in rows)
    for what, name, value, note in rows:
        print(f"{what:<{width}}  {name:<5} {value:>9.1f}   {note}")
    ratios = {
        "train_ratio": train["recommended"]["ours"] / train["recommended"]["gpt2"],
        "train_plain_ratio": train["plain"]["ours"] / train["plain"]["gpt2"],
        "decode_b1_ratio": decode_rate[1]["ours"] / decode_rate[1]["gpt2"],
        "decode_b8_ratio": decode_rate[8]["ours"] / decode_rate[8]["gpt2"],
        "rss_ratio": rss["ours"] / rss["gpt2"],
    }
    print(f"identical plain settings: train_plain_ratio={ratios['train_plain_ratio']:.3f}")
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items() if k != "train_plain_ratio"))


if __name__ == "__main__":
    main()
