"""The model on a CUDA GPU gives what it gives on the CPU: logits in fp32 and bf16 with every attention backend
installed, greedy tokens with a dynamic cache and with generate()'s own compiled static cache (CUDA graphs),
bf16-autocast training against fp32, seeded dropout, and the pretrain recipe's default precision. Skipped where
there is no GPU (CI); `benchmarks/gpu_check.sh` runs this file on one."""

import copy
import importlib.util
import json

import pytest
import torch

from hf_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt.recipes import pretrain

from support import TEXT, assert_close_in_bf16, tiny_config, tiny_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = "cuda"
IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 8, 61, 7, 1, 13, 2], [7, 1, 13, 2, 90, 33, 4, 12, 5, 17, 3, 99]])
BACKENDS = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


def cpu_model(**config) -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config(emb_dim=64, **config)).eval()


def on_gpu(model, attention: str, dtype=torch.float32):
    # A copy, configuration included (models built from one config object share it, attention backend too):
    # `model` stays on the CPU, as it was, the reference.
    gpu = ScratchGPTForCausalLM(copy.deepcopy(model.config)).eval()
    gpu.load_state_dict(model.state_dict())
    gpu.set_attn_implementation(attention)
    return gpu.to(GPU, dtype)


@pytest.mark.parametrize("attention", BACKENDS)
def test_logits_on_the_gpu_match_the_cpu(attention):
    model = cpu_model()
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        expected = model(IDS, attention_mask=mask).logits
        for dtype in (torch.float32, torch.bfloat16):
            if attention == "flash_attention_2" and dtype is torch.float32:
                continue  # flash attention computes in 16 bits only
            logits = on_gpu(model, attention, dtype)(IDS.to(GPU), attention_mask=mask.to(GPU)).logits
            scale = expected.abs().max().item()
            tolerance = 1e-4 if dtype is torch.float32 else 0.03 * scale
            torch.testing.assert_close(logits.float().cpu()[mask.bool()], expected[mask.bool()],
                                       atol=tolerance, rtol=0)


def test_greedy_tokens_with_and_without_a_cache_and_compiled_match_the_cpu():
    model = cpu_model()
    prompt = IDS[:, :5]
    settings = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    expected = model.generate(prompt, **settings)
    gpu = on_gpu(model, "sdpa")
    prompt, settings["attention_mask"] = prompt.to(GPU), settings["attention_mask"].to(GPU)
    for options in ({}, {"use_cache": False}, {"cache_implementation": "static"}):
        # A static cache on CUDA: generate() compiles the forward itself (reduce-overhead, CUDA graphs).
        torch._dynamo.reset()
        assert torch.equal(gpu.generate(prompt, **settings, **options).cpu(), expected), options
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the static cache's run compiled


@pytest.mark.parametrize("attention", BACKENDS)
def test_bf16_autocast_training_on_the_gpu_matches_fp32(attention):
    model = on_gpu(cpu_model(), attention).train()
    ids = IDS.to(GPU)

    def loss_and_grads(bf16: bool):
        model.zero_grad()
        with torch.autocast(GPU, dtype=torch.bfloat16, enabled=bf16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}

    if attention == "flash_attention_2":  # no fp32 flash: compare with sdpa's fp32
        bf16 = loss_and_grads(True)
        model.set_attn_implementation("sdpa")
        assert_close_in_bf16(bf16, loss_and_grads(False))
    else:
        assert_close_in_bf16(loss_and_grads(True), loss_and_grads(False))


def test_dropout_on_the_gpu_is_seeded_and_drops():
    model = on_gpu(cpu_model(drop_rate=0.5), "sdpa").train()
    ids = IDS.to(GPU)

    def loss(seed):
        torch.manual_seed(seed)
        return model(ids, labels=ids).loss.item()

    dropped = loss(1)
    assert loss(1) == dropped and loss(2) != dropped
    model.eval()
    assert model(ids, labels=ids).loss.item() != dropped  # training mode dropped something


def test_pretrain_on_the_gpu_trains_in_bf16(tmp_path):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(TEXT, encoding="utf-8")
    metrics = pretrain(*tiny_run(corpus, out))
    assert json.loads((out / "training_args.json").read_text())["bf16"] is torch.cuda.is_bf16_supported()
    history = json.loads((out / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert metrics["eval_loss"] < losses[0]
