"""torch.compile: the model traces as one graph (no breaks) for training and inference, in every attention backend
and under bf16 autocast, and generate() with a static cache runs compiled, with the tokens of the eager model."""

import contextlib

import pytest
import torch
import torch._dynamo

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification

from support import tiny_config

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 8, 61], [7, 1, 13, 2, 90, 33, 4, 12]])
PADDED = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])


@pytest.mark.parametrize("case", ["train", "train padded", "train eager", "train bf16", "eval", "classify"])
def test_the_model_compiles_without_graph_breaks(case):
    torch.manual_seed(0)
    if case == "classify":
        model, inputs = ScratchGPTForSequenceClassification(tiny_config(num_labels=2)), dict(
            attention_mask=PADDED, labels=torch.tensor([0, 1]))
    else:
        attention = "eager" if case == "train eager" else "sdpa"
        model = ScratchGPTForCausalLM(tiny_config(attn_implementation=attention))
        inputs = dict(labels=IDS, **({"attention_mask": PADDED} if case == "train padded" else {}))
    model.train(case != "eval")
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if case == "train bf16" else contextlib.nullcontext()
    torch._dynamo.reset()
    with bf16:
        explained = torch._dynamo.explain(model)(IDS, **inputs)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_generate_with_a_static_cache_runs_compiled_with_the_same_tokens():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    prompt = IDS[:, :5]
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True)  # fullgraph: a graph break would be an error
    compiled = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                              cache_implementation="static")
    assert torch.equal(compiled, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def test_compiled_training_draws_the_dropout_masks_of_eager_training():
    """The CPU dropout masks come from a custom op that torch.compile calls as it is: one seed, the same masks
    (and so the same loss and gradients) eager and compiled, a mask of its own for every dropout."""
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config(drop_rate=0.3, attn_implementation="eager")).train()

    def loss_and_grad(forward, seed):
        torch.manual_seed(seed)
        loss = forward(IDS, labels=IDS).loss
        (grad,) = torch.autograd.grad(loss, model.model.trf_blocks[0].ff.fc_in.weight)
        return loss.detach(), grad

    eager_loss, eager_grad = loss_and_grad(model, seed=1)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    compiled_loss, compiled_grad = loss_and_grad(compiled, seed=1)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
    other_seed_loss, _ = loss_and_grad(compiled, seed=2)
    assert abs(other_seed_loss - compiled_loss) > 1e-3  # the masks decide the loss: the seed matters
    with torch.no_grad():  # and with dropout off the loss is another again
        assert abs(model.eval()(IDS, labels=IDS).loss - compiled_loss) > 1e-3


def test_compiled_dropout_masks_any_layout_as_eager_does():
    from hf_scratch_gpt.kernels_scratch_gpt import dropout16

    x = torch.randn(6, 10).t()  # not contiguous: the mask op returns a contiguous mask of the same shape
    compiled = torch.compile(lambda t: dropout16(t, 0.5), fullgraph=True)
    torch.manual_seed(3)
    out = compiled(x)
    torch.manual_seed(3)
    assert torch.equal(out, dropout16(x, 0.5))
    kept = out != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(out[kept], 2 * x[kept])  # p = 0.5: the kept values doubled
