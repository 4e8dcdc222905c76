"""Packed rows and continuous batching: the model as the machinery around generate() and Trainer drives it.

Packed rows hold several sequences one after another, positions restarting at 0 at each (what
DataCollatorWithFlattening, TRL's padding_free and vLLM send). Continuous batching (`generate_batch`, which
`transformers serve --continuous-batching` runs) packs every request into one row and keeps their keys and values
in a paged cache."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import ContinuousBatchingConfig, DataCollatorWithFlattening, GenerationConfig

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from hf_scratch_gpt.modeling_scratch_gpt import CACHE_NAME

from support import VOCAB, tiny_config

SEQUENCES = [[(7 * i + 3) % (VOCAB - 1) for i in range(20)], [(5 * i + 1) % (VOCAB - 1) for i in range(15)],
             [(11 * i + 2) % (VOCAB - 1) for i in range(12)]]  # 47 tokens in all, context_length 32: each fits
PROMPTS = [[3, 14, 15, 92, 65], [9, 26], [58, 97, 93, 7, 8, 9, 10], [42]]
NEW_TOKENS = 8
# A paged cache the size of these requests: left to itself, continuous batching sizes it by the memory free (on a
# CPU, the machine's RAM): 120 s a test here at transformers 5.16, 59 s at 5.25, instead of 0.6 s.
PAGED_CACHE = dict(num_blocks=16, max_batch_tokens=64)


def causal_lm(**overrides):
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config(initializer_range=0.2, **overrides)).eval()  # varied greedy tokens


def packed(sequences):
    """One row holding every sequence, and its positions."""
    ids = torch.tensor([[token for sequence in sequences for token in sequence]])
    positions = torch.tensor([[i for sequence in sequences for i in range(len(sequence))]])
    return ids, positions


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_a_packed_row_gives_each_sequence_its_logits_alone(implementation):
    model = causal_lm()
    model.set_attn_implementation(implementation)
    ids, positions = packed(SEQUENCES)
    assert ids.shape[1] > model.config.context_length
    with torch.no_grad():
        row = model(ids, position_ids=positions).logits[0]
        model.set_attn_implementation("eager")
        alone = torch.cat([model(torch.tensor([s])).logits[0] for s in SEQUENCES])
    torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_batch_of_packed_rows_and_their_attentions_keep_the_sequences_apart(implementation):
    """One packed row is attended a sequence at a time; a batch of them, or a request for the attention weights,
    takes the block-diagonal mask: the same logits, and weights of zero across sequences."""
    model = causal_lm()
    model.set_attn_implementation(implementation)
    first, positions = packed(SEQUENCES[:2])
    second, _ = packed(SEQUENCES[1:] + [SEQUENCES[0][:8]])  # 35 tokens as well: 15 + 12 + 8
    second_positions = torch.tensor([[i for n in (15, 12, 8) for i in range(n)]])
    with torch.no_grad():
        alone = model(first, position_ids=positions).logits
        batch = model(torch.cat([first, second]), position_ids=torch.cat([positions, second_positions])).logits
        weights = model(first, position_ids=positions, output_attentions=True)
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.logits, alone, atol=1e-5, rtol=1e-5)
    for layer in weights.attentions:  # (1, heads, 35, 35): the second sequence never looks at the first
        assert layer.shape[-1] == 35 and layer[..., 20:, :20].abs().max() == 0


def test_a_packed_batch_trains_as_the_padded_batch_does():
    """DataCollatorWithFlattening's row (labels -100 at each sequence's start) gives the padded batch's loss
    and gradients: no sequence sees another, and no loss crosses a boundary."""
    model = causal_lm().train()
    features = [{"input_ids": s} for s in SEQUENCES]
    flat = DataCollatorWithFlattening()(features, return_tensors="pt")
    width = max(map(len, SEQUENCES))
    padded_ids = torch.tensor([s + [VOCAB - 1] * (width - len(s)) for s in SEQUENCES])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES])
    labels = padded_ids.masked_fill(mask == 0, -100)

    def loss_and_gradient(**batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), model.model.tok_emb.weight.grad.clone()

    flat_loss, flat_grad = loss_and_gradient(input_ids=flat["input_ids"], position_ids=flat["position_ids"],
                                             labels=flat["labels"])
    padded_loss, padded_grad = loss_and_gradient(input_ids=padded_ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(flat_loss, padded_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_packed_rows_build_no_cache_and_refuse_one_asked_for():
    model = causal_lm()
    ids, positions = packed(SEQUENCES)
    with torch.no_grad():
        assert getattr(model(ids, position_ids=positions), CACHE_NAME) is None
        with pytest.raises(ValueError, match="one cache cannot hold several sequences"):
            model(ids, position_ids=positions, use_cache=True)
        assert getattr(model(ids[:, :20], position_ids=positions[:, :20]), CACHE_NAME) is not None  # one sequence


def test_a_sequence_longer_than_the_context_is_refused_packed_or_not():
    model = causal_lm()
    ids, positions = packed([list(range(33))])
    with pytest.raises(ValueError, match=r"position_ids holds position 32, outside \[0, context_length=32\): each "
                                         "sequence must fit the context"):
        model(ids, position_ids=positions)
    with pytest.raises(ValueError, match=r"Sequence of 33 tokens \(0 cached \+ 33 new\) is longer than"):
        model(ids)


def test_a_packed_row_in_the_classifier_pools_its_last_sequence_alone():
    """Not a packing path of its own: the classifier pools one position per row, so a packed row is one
    example; its logits equal the last sequence's alone."""
    torch.manual_seed(0)
    model = ScratchGPTForSequenceClassification(tiny_config(num_labels=3)).eval()
    ids, positions = packed(SEQUENCES)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, position_ids=positions).logits,
                                   model(torch.tensor([SEQUENCES[-1]])).logits, atol=1e-5, rtol=1e-5)


def greedy(model, prompts):
    return [model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(p):].tolist()
            for p in prompts]


def generate_batch(model, prompts):
    """Continuous batching's greedy tokens, request by request in the order given."""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=model.config.eos_token_id,
                              pad_token_id=model.config.pad_token_id)
    results = model.generate_batch(prompts, generation_config=config,
                                   continuous_batching_config=ContinuousBatchingConfig(**PAGED_CACHE))
    return [results[f"req_{i}"].generated_tokens for i in range(len(prompts))]


@pytest.mark.parametrize("implementation", ["paged|sdpa", "paged|eager"])
def test_continuous_batching_gives_generates_greedy_tokens(implementation):
    model = causal_lm()
    expected = greedy(model, PROMPTS)
    assert len({tuple(tokens) for tokens in expected}) == len(PROMPTS)  # the requests are told apart
    model.set_attn_implementation(implementation)
    assert generate_batch(model, PROMPTS) == expected


def test_continuous_batching_manager_serves_requests_as_they_come():
    model = causal_lm()
    expected = greedy(model, PROMPTS)
    model.set_attn_implementation("paged|sdpa")
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=model.config.eos_token_id)
    manager = model.init_continuous_batching(generation_config=config,
                                             continuous_batching_config=ContinuousBatchingConfig(**PAGED_CACHE))
    manager.start()
    try:
        ids = [manager.add_request(prompt, request_id=f"r{i}") for i, prompt in enumerate(PROMPTS)]
        results = {}
        for _ in PROMPTS:
            result = manager.get_result(timeout=60)
            results[result.request_id] = result.generated_tokens
    finally:
        manager.stop(block=True)
    assert [results[i] for i in ids] == expected


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_scratch_gpt"] = None  # this process cannot import the package
    from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True,
                                                 attn_implementation=sys.argv[2]).eval()
    assert not type(model).__module__.startswith("hf_scratch_gpt"), type(model).__module__
    prompts = json.loads(sys.argv[3])
    config = GenerationConfig(max_new_tokens=int(sys.argv[4]), do_sample=False, eos_token_id=model.config.eos_token_id)
    cache = ContinuousBatchingConfig(**json.loads(sys.argv[5]))
    results = model.generate_batch(prompts, generation_config=config, continuous_batching_config=cache)
    print(json.dumps([results[f"req_{i}"].generated_tokens for i in range(len(prompts))]))
    """
)


@pytest.mark.parametrize("implementation", ["paged|sdpa", "paged|eager"])
def test_continuous_batching_through_remote_code(tmp_path, implementation):
    model = causal_lm()
    expected = greedy(model, PROMPTS)
    model.save_pretrained(tmp_path / "model")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "model"), implementation, json.dumps(PROMPTS),
         str(NEW_TOKENS), json.dumps(PAGED_CACHE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
