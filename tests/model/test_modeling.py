"""The model itself: the book's module names, attention backends, padding, the cache, the losses, the heads, the
kernels."""

import math
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification, ScratchGPTModel
from hf_scratch_gpt import kernels_scratch_gpt as kernels
from hf_scratch_gpt import modeling_scratch_gpt as modeling
from hf_scratch_gpt.kernels_scratch_gpt import TRIALS, Linear, head_cross_entropy

from support import VOCAB, enable_checkpointing, left_padded, tiny_config


def causal_lm(**overrides):
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config(**overrides)).eval()


def test_module_names_follow_the_book():
    names = {name for name, _ in causal_lm().named_modules()}
    for expected in ["model.tok_emb", "model.pos_emb", "model.trf_blocks.1.att.qkv", "model.trf_blocks.1.att.out_proj",
                     "model.trf_blocks.0.ff.fc_in", "model.trf_blocks.0.ff.fc_out", "model.trf_blocks.0.norm1",
                     "model.final_norm", "lm_head"]:
        assert expected in names


@pytest.mark.parametrize("name, expected", [
    ("gelu_pytorch_tanh", lambda h: torch.nn.functional.gelu(h, approximate="tanh")),
    ("gelu", torch.nn.functional.gelu),
    ("relu", torch.relu),
])
def test_feed_forward_uses_the_configured_activation(name, expected):
    torch.manual_seed(0)
    ff = ScratchGPTForCausalLM(tiny_config(activation_function=name)).model.trf_blocks[0].ff
    x = torch.randn(2, 3, ff.fc_in.in_features)
    torch.testing.assert_close(ff(x), ff.fc_out(expected(ff.fc_in(x))), rtol=0, atol=0)


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config(emb_dim=256, n_heads=4, n_layers=8, vocab_size=2000))
    block = model.model.trf_blocks[0]
    assert block.att.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert block.att.out_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.ff.fc_out.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.norm1.weight == 1) and torch.all(block.att.out_proj.bias == 0)


def test_tied_by_default_untied_on_request(tmp_path):
    model = causal_lm()
    assert model.lm_head.weight is model.model.tok_emb.weight
    untied = causal_lm(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.tok_emb.weight
    # Only a tied head goes unsaved; saying so (Trainer reads it when it reloads a checkpoint) changes no file.
    assert model._keys_to_ignore_on_save == {"lm_head.weight"} and not untied._keys_to_ignore_on_save
    model.save_pretrained(tmp_path / "tied")
    untied.save_pretrained(tmp_path / "untied")
    assert "out_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    # The head is `lm_head` in the model and the book's `out_head` in the file, as in every folder saved before the
    # module was renamed; from_pretrained and plain load_state_dict (Trainer resuming) both read it back.
    saved = load_file(tmp_path / "untied" / "model.safetensors")
    assert "lm_head.weight" not in saved
    torch.testing.assert_close(saved["out_head.weight"], untied.lm_head.weight, atol=0, rtol=0)
    reloaded = ScratchGPTForCausalLM.from_pretrained(tmp_path / "untied")
    fresh = causal_lm(tie_word_embeddings=False)
    torch.nn.init.zeros_(fresh.lm_head.weight)
    fresh.load_state_dict(saved, strict=True)
    for model in (reloaded, fresh):
        torch.testing.assert_close(model.lm_head.weight, untied.lm_head.weight, atol=0, rtol=0)


def test_eager_and_sdpa_agree_with_padding():
    model = causal_lm()
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(sdpa[real], eager[real], atol=1e-5, rtol=0)


def test_sdpa_with_attention_dropout_in_cpu_training_takes_the_eager_path(monkeypatch):
    """sdpa has no fused CPU kernel with dropout; its fallback is ours in fp32. Training with dropout on the
    CPU runs the eager attention (same masks from the same seed); without dropout, or in eval, sdpa runs."""
    calls = []
    real_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    ids = torch.randint(0, VOCAB, (2, 9))
    losses = {}
    for implementation in ("eager", "sdpa"):
        model = causal_lm(drop_rate=0.1).train()
        model.set_attn_implementation(implementation)
        torch.manual_seed(1)
        losses[implementation] = model(ids, labels=ids).loss
    assert not calls
    torch.testing.assert_close(losses["sdpa"], losses["eager"], atol=0, rtol=0)
    model(ids)  # in training, without labels: still dropout, still eager
    assert not calls
    model.eval()(ids)
    assert len(calls) == 2  # one per block
    causal_lm(drop_rate=0.0, attn_implementation="sdpa").train()(ids)
    assert len(calls) == 4


def test_attn_implementation_chosen_at_load_time(tmp_path):
    causal_lm().save_pretrained(tmp_path)
    for implementation in ("eager", "sdpa"):
        loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation)
        assert loaded.config._attn_implementation == implementation


def test_left_padding_gives_each_row_its_unpadded_logits():
    model = causal_lm()
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ids, mask = left_padded(rows)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row])).logits[0]
            torch.testing.assert_close(batch[i, -len(row):], alone, atol=1e-5, rtol=0)


def test_cache_continues_exactly_like_a_full_forward():
    model = causal_lm()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :8], use_cache=True)
        assert isinstance(first.past_key_values, DynamicCache)
        assert first.past_key_values.get_seq_length() == 8
        rest = model(ids[:, 8:], past_key_values=first.past_key_values, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), full, atol=1e-5, rtol=0)


def test_no_cache_while_training_unless_asked():
    model = causal_lm().train()
    assert model(torch.tensor([[1, 2, 3]])).past_key_values is None
    assert model.eval()(torch.tensor([[1, 2, 3]])).past_key_values is not None


def test_logits_to_keep():
    model = causal_lm()
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_loss_shifts_labels_and_honours_num_items_in_batch():
    model = causal_lm()
    ids = torch.randint(0, VOCAB - 1, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    targets = labels[:, 1:]
    log_probs = out.logits[:, :-1].log_softmax(-1)
    keep = targets != -100
    picked = log_probs[keep].gather(-1, targets[keep][:, None])
    torch.testing.assert_close(out.loss, -picked.mean())
    summed = model(ids, labels=labels, num_items_in_batch=torch.tensor(100)).loss
    torch.testing.assert_close(summed, -picked.sum() / 100)


@pytest.mark.parametrize("num_items_in_batch", [None, torch.tensor(37)])
@pytest.mark.parametrize("tied", [True, False])
def test_training_loss_never_builds_the_logits_and_equals_the_plain_loss(num_items_in_batch, tied):
    model = causal_lm(drop_rate=0.0, tie_word_embeddings=tied).train()
    ids = torch.randint(0, VOCAB - 1, (3, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[2] = -100  # a row with nothing to score
    out = model(ids, labels=labels, num_items_in_batch=num_items_in_batch)
    assert out.logits is None
    (out.loss * 3).backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits = model.lm_head(model.model(ids).last_hidden_state)
    plain = model.loss_function(logits, labels, vocab_size=VOCAB, num_items_in_batch=num_items_in_batch)
    (plain * 3).backward()
    torch.testing.assert_close(out.loss, plain)
    for name, param in model.named_parameters():
        torch.testing.assert_close(fused[name], param.grad, atol=1e-6, rtol=1e-5)


def test_head_cross_entropy_is_the_same_in_any_chunking_and_skips_a_frozen_head():
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    labels = torch.randint(0, VOCAB, (2, 9))
    labels[1, 3:] = -100
    results = []
    for chunk_rows in (1, 4, 256):
        loss = head_cross_entropy(hidden, weight, labels, chunk_rows=chunk_rows)
        results.append((loss, *torch.autograd.grad(loss, (hidden, weight))))
    for other in results[:2]:
        for a, b in zip(other, results[2]):
            torch.testing.assert_close(a, b)
    frozen = weight.detach()
    loss = head_cross_entropy(hidden, frozen, labels, chunk_rows=4)
    (grad_hidden,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(grad_hidden, results[2][1])
    # The weight's gradient is scaled in place in backward: a second backward through the same graph is
    # refused (autograd sees the saved tensor changed), never silently scaled twice.
    loss = head_cross_entropy(hidden, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_hidden_states_and_attentions():
    model = causal_lm()
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
        embeddings = model.model.tok_emb(ids) + model.model.pos_emb(torch.arange(7))
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2  # embeddings + each block; each block
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    weights = out.attentions[0]
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    assert torch.all(weights.triu(1) == 0)  # causal
    as_tuple = model(ids, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    monkeypatch.setattr(kernels, "_TRAINING_ATTENTION", {})  # the attention is timed inside a checkpointed layer

    def grads(checkpointing):
        model = causal_lm(drop_rate=0.0).train()
        if checkpointing:
            enable_checkpointing(model)
        ids = torch.arange(20).view(2, 10)
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    checkpointed, plain = grads(True), grads(False)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_resize_token_embeddings_keeps_tie():
    model = causal_lm()
    model.resize_token_embeddings(VOCAB + 7)
    assert model.config.vocab_size == VOCAB + 7
    assert model.lm_head.weight.shape == (VOCAB + 7, 32)
    assert model.lm_head.weight is model.model.tok_emb.weight


def classifier(**overrides):
    torch.manual_seed(0)
    return ScratchGPTForSequenceClassification(tiny_config(**overrides)).eval()


def test_classification_pools_last_real_token_either_padding_side():
    model = classifier(num_labels=3)
    rows = [[5, 6, 7, 8, 9], [11, 12]]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([r])).logits for r in rows])
        ids, mask = left_padded(rows)
        left = model(ids, attention_mask=mask).logits
        right_ids = torch.tensor([rows[0], rows[1] + [VOCAB - 1] * 3])
        right_mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
        right = model(right_ids, attention_mask=right_mask).logits
        by_pad_id = model(right_ids).logits  # no mask: pad_token_id finds the end
    assert left.shape == (2, 3)
    for other in (left, right, by_pad_id):
        torch.testing.assert_close(other, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (3, torch.tensor([0, 2]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
        (1, torch.tensor([0.5, -1.0]), "regression"),
    ],
)
def test_classification_problem_types(num_labels, labels, problem_type):
    model = classifier(num_labels=num_labels)
    ids = torch.randint(0, VOCAB - 1, (2, 6))
    out = model(ids, labels=labels)
    assert model.config.problem_type == problem_type
    logits = out.logits
    expected = {
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(logits, labels),
        "regression": lambda: torch.nn.functional.mse_loss(logits.squeeze(), labels),
    }[problem_type]()
    torch.testing.assert_close(out.loss, expected)


def test_classification_without_pad_token_or_mask_is_a_clear_error():
    model = classifier(pad_token_id=None)
    with pytest.raises(ValueError, match="pad_token_id"):
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 2)  # one row needs no padding rule


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.tensor([[1, VOCAB]])), f"token id {VOCAB}, outside the vocabulary \\[0, {VOCAB}\\)"),
        (lambda m: m(torch.tensor([[1, -3]])), "token id -3"),
        (lambda m: m(torch.zeros(1, 33, dtype=torch.long)), "33 tokens .* context_length=32"),
        (lambda m: m(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5)), r"shape \(2, 5\).*\(2, 4\)"),
        (lambda m: m(torch.ones(4, dtype=torch.long)), "batch, sequence"),
        (lambda m: m(torch.ones(1, 0, dtype=torch.long)), "at least one token"),
        (lambda m: m(), "exactly one of"),
        (lambda m: m(torch.ones(1, 3, dtype=torch.long), position_ids=torch.tensor([[30, 31, 32]])),
         r"position 32, outside \[0, context_length=32\)"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(causal_lm())


def test_cache_past_the_context_is_a_clear_error():
    model = causal_lm()
    out = model(torch.ones(1, 30, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match=r"33 tokens \(30 cached \+ 3 new\)"):
        model(torch.ones(1, 3, dtype=torch.long), past_key_values=out.past_key_values)


def test_base_model_outputs_hidden_states():
    torch.manual_seed(0)
    base = ScratchGPTModel(tiny_config()).eval()
    out = base(torch.tensor([[1, 2, 3]]))
    assert out.last_hidden_state.shape == (1, 3, 32)


@pytest.mark.parametrize("rows", [1, 2, 8, 64, 65, 300])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gives_nn_linear_results_on_every_path(rows, bias, grad, dtype):
    torch.manual_seed(0)
    ours = Linear(48, 80, bias=bias).to(dtype)
    reference = torch.nn.Linear(48, 80, bias=bias).to(dtype)
    reference.load_state_dict(ours.state_dict())
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype is torch.float32 else dict(atol=2e-2, rtol=2e-2)
    x = torch.randn(rows, 1, 48, dtype=dtype, requires_grad=grad)
    with torch.no_grad():
        for kernel in kernels.candidates(dtype, rows):
            out = kernel(x, ours.weight, ours.bias)
            assert out.shape == (rows, 1, 80) and out.is_contiguous(), kernel.__name__
            torch.testing.assert_close(out, reference(x), **tolerance, msg=kernel.__name__)
    with torch.set_grad_enabled(grad):
        for _ in range(len(kernels.candidates(dtype, rows)) * (TRIALS + 1) + 1):  # each on trial, then the one kept
            out = ours(x)
            assert out.shape == (rows, 1, 80)
            torch.testing.assert_close(out, reference(x), **tolerance)
    if grad:
        out.sum().backward()
        grad_ours = x.grad.clone()
        x.grad = None
        reference(x).sum().backward()
        torch.testing.assert_close(grad_ours, x.grad, **tolerance)
        torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout16_drops_p_of_the_values_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1001, 999, requires_grad=True)  # not a multiple of four draws
    out = kernels.dropout16(x, p)
    kept = out != 0
    scale = 2**16 / (2**16 - round(p * 2**16))
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], scale))
    share = 1 - kept.float().mean().item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / x.numel())  # 5 sigma
    assert abs(out.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / x.numel())
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept * scale)  # the gradient goes through the kept values only
    torch.manual_seed(0)
    assert torch.equal(kernels.dropout16(x, p), out)  # the seed decides the mask
    strided = torch.randn(64, 48).T  # any layout, any dtype
    for y in (strided, strided.bfloat16()):
        dropped = kernels.dropout16(y, p)
        assert dropped.dtype == y.dtype
        torch.testing.assert_close(dropped[dropped != 0], (y * scale).to(y.dtype)[dropped != 0])


def test_dropout16_is_plain_dropout_where_it_does_nothing_or_everything():
    x = torch.randn(8, 16)
    assert torch.equal(kernels.dropout16(x, 0.1, training=False), x)
    assert torch.equal(kernels.dropout16(x, 0.0), x)
    assert torch.equal(kernels.dropout16(x, 1.0), torch.zeros_like(x))
    module = kernels.Dropout(0.1)
    assert isinstance(module, torch.nn.Dropout)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(torch.ones(4096)) == 0).any()


def _sleeping(seconds, slow_calls=0):
    """A kernel that sleeps `seconds`, its first `slow_calls` calls 10 ms more (one-time costs, a busy machine)."""
    calls = []

    def kernel(x, weight, bias):
        time.sleep(seconds + (0.01 if len(calls) < slow_calls else 0))
        calls.append(None)
        return kernel.__name__

    kernel.__name__ = f"sleeps {seconds}"
    return kernel


@pytest.mark.parametrize("plain_s, other_s, kept", [(0.004, 0.001, "other"), (0.001, 0.004, "plain")])
def test_the_kernel_kept_is_the_fastest_measured_here_and_never_slower_than_the_plain_one(
        monkeypatch, plain_s, other_s, kept):
    # The faster kernel's first five calls are slow, as on a busy machine: its first is not timed, and four
    # of seven timed ones (a median) do not outweigh three fast ones (a lower quartile).
    plain = _sleeping(plain_s, slow_calls=5 if kept == "plain" else 0)
    other = _sleeping(other_s, slow_calls=5 if kept == "other" else 0)
    monkeypatch.setattr(kernels, "plain_linear", plain)
    choice = kernels.KernelChoice([plain, other])
    calls = [choice(None, None, None) for _ in range(2 * (TRIALS + 1))]
    assert calls == [plain.__name__, other.__name__] * (TRIALS + 1)  # each called in turn, the first untimed
    assert choice.chosen is (other if kept == "other" else plain)
    assert choice(None, None, None) == choice.chosen.__name__
    assert kernels.KernelChoice([plain]).chosen is plain  # nothing to choose from: no timing


def _slowed(attention, seconds):
    """An attention function that takes `seconds` more than `attention`, and counts its calls."""
    def slowed(*args, **kwargs):
        slowed.calls += 1
        time.sleep(seconds)
        return attention(*args, **kwargs)

    slowed.calls = 0
    return slowed


@pytest.mark.parametrize("slow", ["sdpa", "eager"])
def test_cpu_training_takes_the_attention_timed_faster_here_with_the_same_values(monkeypatch, slow):
    monkeypatch.setattr(kernels, "_TRAINING_ATTENTION", {})
    candidates = dict(modeling.TRAINING_ATTENTION)
    candidates[slow] = _slowed(candidates[slow], 0.003)
    monkeypatch.setattr(modeling, "TRAINING_ATTENTION", candidates)
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(tiny_config(attn_implementation="sdpa")).train()
    faster = "eager" if slow == "sdpa" else "sdpa"
    reference = ScratchGPTForCausalLM(tiny_config(attn_implementation=faster)).train()
    reference.load_state_dict(ours.state_dict())
    ids = torch.randint(0, VOCAB, (3, 12))

    with torch.no_grad():
        ours.eval()(ids)  # inference is not timed
    assert kernels._TRAINING_ATTENTION == {}
    rng = torch.get_rng_state()
    for model in (ours.train(), reference):
        model(ids, labels=ids).loss.backward()
    assert torch.equal(torch.get_rng_state(), rng)
    # One size class timed for the model's layers (each candidate TRIALS + 1 times), then the faster one taken.
    assert kernels._TRAINING_ATTENTION == {(torch.float32, 8, 16, 16, 16): faster}  # 3 x 4 heads, 12 tokens
    assert candidates[slow].calls == TRIALS + 1
    # The timing's backward passes ran on detached copies: the model's gradients are those of the faster
    # implementation alone.
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    other = torch.randint(0, VOCAB, (4, 9))
    ours(other, labels=other).loss.backward()  # 4 x 4 heads, 9 tokens: the same size class
    assert candidates[slow].calls == TRIALS + 1


def test_attention_too_large_to_materialise_is_not_timed(monkeypatch):
    monkeypatch.setattr(kernels, "_TRAINING_ATTENTION", {})
    monkeypatch.setattr(kernels, "SCORES_TIMED", 3 * 4 * 12 * 12 - 1)  # tiny_config: 4 heads
    eager = _slowed(modeling.eager_attention_forward, 0)
    monkeypatch.setitem(modeling.TRAINING_ATTENTION, "eager", eager)
    model = ScratchGPTForCausalLM(tiny_config(attn_implementation="sdpa")).train()
    ids = torch.randint(0, VOCAB, (3, 12))
    model(ids, labels=ids).loss.backward()
    assert eager.calls == 0 and kernels._TRAINING_ATTENTION == {}
