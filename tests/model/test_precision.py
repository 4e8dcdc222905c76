"""bf16 autocast, the recipes' default where the hardware computes bf16 natively: every path of ours (attention
backends, the chunked head loss, LoRA) gives what fp32 gives, within bf16's rounding."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt import kernels_scratch_gpt as kernels
from hf_scratch_gpt.kernels_scratch_gpt import head_cross_entropy
from hf_scratch_gpt.recipes import PretrainingArguments
from hf_scratch_gpt.recipes.arguments import native_bf16

from support import assert_close_in_bf16, tiny_config

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def loss_and_grads(model, ids, autocast: bool, attention_mask=None):
    model.zero_grad()
    labels = ids if attention_mask is None else ids.masked_fill(attention_mask == 0, -100)
    with torch.autocast(**BF16, enabled=autocast):
        loss = model(ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_training_under_bf16_autocast_matches_fp32(monkeypatch, attention, tied, padded):
    # Left padding gives rows with no key to attend to: with eager attention's additive fp32 mask added
    # in place to bf16 scores they became -inf, then NaN. sdpa is kept in training (not timed against eager):
    # their outputs differ where a row attends to nothing, and the first real token's label is scored there.
    monkeypatch.setattr(kernels, "SCORES_TIMED", 0)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config(emb_dim=64, attn_implementation=attention,
                                              tie_word_embeddings=tied)).train()
    ids = torch.randint(0, model.config.vocab_size, (4, 24))
    mask = torch.ones_like(ids)
    mask[0, :5] = mask[2, :2] = 0
    mask = mask if padded else None
    assert_close_in_bf16(loss_and_grads(model, ids, True, mask), loss_and_grads(model, ids, False, mask))


def test_the_chunked_head_loss_under_autocast_matches_fp32():
    torch.manual_seed(0)
    hidden = torch.randn(3, 40, 64, requires_grad=True)
    weight = (torch.randn(300, 64) * 0.1).requires_grad_()
    labels = torch.randint(0, 300, (3, 40))
    labels[0, :7] = -100

    def run(autocast):
        hidden.grad = weight.grad = None
        with torch.autocast(**BF16, enabled=autocast):
            loss = head_cross_entropy(hidden, weight, labels, chunk_rows=16)
        loss.backward()
        return loss.detach(), {"hidden": hidden.grad.clone(), "weight": weight.grad.clone()}

    reference = torch.nn.functional.cross_entropy((hidden @ weight.T)[:, :-1].reshape(-1, 300),
                                                  labels[:, 1:].reshape(-1), ignore_index=-100)
    fp32 = run(False)
    assert fp32[0].item() == pytest.approx(reference.item(), rel=1e-6)
    assert_close_in_bf16(run(True), fp32)


def test_lora_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config(emb_dim=64))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["qkv", "out_proj"],
                                             init_lora_weights=False))
    ids = torch.randint(0, 100, (4, 24))
    bf16, fp32 = loss_and_grads(model, ids, True), loss_and_grads(model, ids, False)
    assert fp32[1] and all("lora_" in name for name in fp32[1])  # only the adapters train
    assert_close_in_bf16(bf16, fp32)


def test_the_recipes_default_precision_is_timed_on_cpus_with_native_bf16(tmp_path):
    args = PretrainingArguments(output_dir=str(tmp_path))
    on_cpu = not torch.accelerator.is_available()
    if on_cpu and native_bf16(on_cpu):
        assert args.bf16 is None and args.use_cpu  # left to Run.trainer, which times both at the run's shape
    else:
        assert args.bf16 is native_bf16(on_cpu)
    assert PretrainingArguments(output_dir=str(tmp_path), bf16=False).bf16 is False
    forced = PretrainingArguments(output_dir=str(tmp_path), bf16=True)
    assert forced.bf16 and (forced.use_cpu or torch.accelerator.is_available())


def test_the_head_gradient_under_autocast_has_no_scale_bias():
    """The division by the number of scored tokens happens in fp32: rounding 1/37 to bf16 would shrink every
    head gradient by 0.19% (a bias, not noise); measured along the fp32 gradient, the scale stays within 7e-4."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 64, 32, requires_grad=True)
    weight = (torch.randn(300, 32) * 0.1).requires_grad_()
    labels = torch.randint(0, 300, (4, 64))
    grads = {}
    for autocast in (False, True):
        weight.grad = None
        with torch.autocast(**BF16, enabled=autocast):
            loss = head_cross_entropy(hidden, weight, labels, num_items_in_batch=torch.tensor(37), chunk_rows=64)
        loss.backward()
        grads[autocast] = weight.grad.clone()
    along = (grads[True] * grads[False]).sum() / (grads[False] ** 2).sum()
    assert abs(along.item() - 1) < 7e-4


def test_the_timed_precision_is_the_faster_one_and_is_kept(tmp_path, monkeypatch):
    from hf_scratch_gpt.recipes import precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = ScratchGPTForCausalLM(tiny_config())
    timings = iter([(0.010, 0.006), (0.010, 0.0099), (0.006, 0.010)])
    monkeypatch.setattr(precision, "_step_seconds", lambda model, rows, length: next(timings))
    bf16, why = precision.measured_bf16(model, rows=8, length=32)
    assert bf16 and why == ("timed on this CPU: a training step of 8 x 32 tokens took 6 ms in bf16 autocast, 10 ms "
                            "in fp32")
    assert precision.measured_bf16(model, rows=8, length=32) == (bf16, why)  # kept: timed once per shape
    assert precision.measured_bf16(model, rows=4, length=32)[0] is False  # within 5% of fp32: fp32 stays
    assert len(json.loads((tmp_path / "hf-scratch-gpt" / "precision.json").read_text())) == 2
    monkeypatch.setattr(precision, "_code_fingerprint", lambda model: "changed")  # another model code: timed again
    assert precision.measured_bf16(model, rows=8, length=32)[0] is False


def test_timing_the_step_leaves_the_model_as_it_was():
    from hf_scratch_gpt.recipes.precision import _step_seconds

    model = ScratchGPTForCausalLM(tiny_config(drop_rate=0.1)).eval()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    state = torch.random.get_rng_state()
    fp32, bf16 = _step_seconds(model, rows=2, length=16)
    assert fp32 > 0 and bf16 > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), state)  # dropout's draws come from a fork
