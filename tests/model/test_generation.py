"""`generate()` on our model: every decoding mode, left padding, streaming, stopping at end-of-text."""

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer

from hf_scratch_gpt import from_gpt2
from hf_scratch_gpt.tokenization import train_tokenizer

from support import VOCAB, left_padded

EOS = VOCAB - 1


@pytest.fixture
def prompt():
    return torch.tensor([[3, 14, 15, 92, 65]])


def test_cache_and_no_cache_give_the_same_greedy_tokens(model, prompt):
    with_cache = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)
    without = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_greedy_is_argmax_of_the_model(model, prompt):
    out = model.generate(prompt, max_new_tokens=5, do_sample=False)
    ids = prompt
    for _ in range(5):
        with torch.no_grad():
            next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], 1)
    assert torch.equal(out, ids)


def test_left_padded_rows_generate_as_if_alone(model):
    rows = [[3, 14, 15, 92, 65, 35], [26, 53], [58, 97, 93]]
    ids, mask = left_padded(rows)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=EOS)
    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), max_new_tokens=10, do_sample=False, pad_token_id=EOS)
        assert batch[i, -10:].tolist() == alone[0, -10:].tolist()


@pytest.mark.parametrize("settings", [
    dict(do_sample=True, temperature=0.7),
    dict(do_sample=True, top_k=5),
    dict(do_sample=True, top_p=0.9, temperature=1.3),
])
def test_sampling_is_seeded_and_varies(model, prompt, settings):
    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(prompt, max_new_tokens=15, **settings)

    assert torch.equal(sample(1), sample(1))
    assert any(not torch.equal(sample(1), sample(s)) for s in range(2, 6))


def test_top_k_one_sampling_is_greedy(model, prompt):
    torch.manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=1)
    assert torch.equal(sampled, model.generate(prompt, max_new_tokens=10, do_sample=False))


def test_beam_search_matches_gpt2(gpt2, prompt):
    model = from_gpt2(gpt2)
    settings = dict(max_new_tokens=8, num_beams=4, do_sample=False, num_return_sequences=2, pad_token_id=EOS)
    assert torch.equal(model.generate(prompt, **settings), gpt2.generate(prompt, **settings))


def test_repetition_penalty_changes_and_matches_gpt2(gpt2, prompt):
    model = from_gpt2(gpt2)
    settings = dict(max_new_tokens=15, do_sample=False, repetition_penalty=1.5)
    penalised = model.generate(prompt, **settings)
    assert torch.equal(penalised, gpt2.generate(prompt, **settings))
    plain = model.generate(prompt, max_new_tokens=15, do_sample=False)
    new_tokens = penalised[0, 5:].tolist()
    assert len(set(new_tokens)) >= len(set(plain[0, 5:].tolist()))


def test_stops_at_eos(model, prompt):
    first = model.generate(prompt, max_new_tokens=1, do_sample=False)[0, -1].item()
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=first)
    assert out.shape[1] == prompt.shape[1] + 1 and out[0, -1].item() == first


def test_streamers_receive_the_generated_text(capsys):
    from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    tokenizer = train_tokenizer(["Hello there, hello world. " * 20], vocab_size=270)
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=64, emb_dim=32, n_heads=2, n_layers=1)
    model = ScratchGPTForCausalLM(config).eval()
    inputs = tokenizer("Hello", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, streamer=TextStreamer(tokenizer))
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == tokenizer.decode(out[0]).rstrip("\n")

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    model.generate(**inputs, max_new_tokens=8, do_sample=False, streamer=streamer)
    assert "".join(streamer) == tokenizer.decode(out[0, inputs.input_ids.shape[1]:])


def test_generating_past_the_context_is_a_clear_error(model, prompt):
    with pytest.raises(ValueError, match="context_length=32"):
        model.generate(prompt, max_new_tokens=40, do_sample=False)
