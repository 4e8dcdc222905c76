"""GPT-2 <-> ours: logits, generated tokens and the round trip, exact; what cannot convert is refused."""

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from hf_scratch_gpt import ScratchGPTForCausalLM, from_gpt2, to_gpt2

from support import VOCAB, left_padded, tiny_gpt2


def padded_batch():
    return left_padded([[3, 14, 15, 92, 65, 35, 89, 79], [26, 53, 58], [97, 93, 23, 84, 62]])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_logits_match_gpt2(gpt2, implementation):
    model = from_gpt2(gpt2)
    for m in (model, gpt2):
        m.set_attn_implementation(implementation)
    ids = torch.randint(0, VOCAB, (3, 20))
    with torch.no_grad():
        ours, theirs = model(ids).logits, gpt2(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_logits_match_gpt2_with_left_padding(gpt2, implementation):
    model = from_gpt2(gpt2)
    for m in (model, gpt2):
        m.set_attn_implementation(implementation)
    ids, mask = padded_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # GPT-2 needs them given; we derive them from the mask
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = gpt2(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-4


def test_greedy_generation_matches_gpt2(gpt2):
    model = from_gpt2(gpt2)
    ids, mask = padded_batch()
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=VOCAB - 1)
    ours = model.generate(ids, attention_mask=mask, **settings)
    theirs = gpt2.generate(ids, attention_mask=mask, **settings)
    assert torch.equal(ours, theirs)


def test_round_trip_reproduces_every_tensor(gpt2):
    back = to_gpt2(from_gpt2(gpt2))
    original, returned = gpt2.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key
    assert back.config.n_embd == gpt2.config.n_embd and back.config.eos_token_id == gpt2.config.eos_token_id


def test_untied_gpt2_round_trip():
    gpt2 = tiny_gpt2(tie_word_embeddings=False)
    with torch.no_grad():
        gpt2.lm_head.weight.add_(1.0)
    model = from_gpt2(gpt2)
    assert not model.config.tie_word_embeddings
    torch.testing.assert_close(model.lm_head.weight, gpt2.lm_head.weight, rtol=0, atol=0)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert (model(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-4
    assert torch.equal(to_gpt2(model).lm_head.weight, gpt2.lm_head.weight)


@pytest.mark.parametrize("biases", [dict(qkv_bias=False), dict(qkv_bias=False, bias=False)])
def test_to_gpt2_from_a_model_without_biases(biases):
    torch.manual_seed(0)
    from support import tiny_config

    model = ScratchGPTForCausalLM(tiny_config(**biases)).eval()
    gpt2 = to_gpt2(model).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert (model(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-4


def test_from_gpt2_folder(tmp_path, gpt2):
    gpt2.save_pretrained(tmp_path)
    model = from_gpt2(str(tmp_path))
    ids = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        assert (model(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-4


def test_not_gpt2_is_a_clear_error(tmp_path):
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    bert.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        from_gpt2(str(tmp_path))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        from_gpt2(bert)
    with pytest.raises(ValueError, match="ScratchGPTForCausalLM"):
        to_gpt2(bert)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_other_gpt2_activations_convert_both_ways(activation):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                        activation_function=activation)
    gpt2 = GPT2LMHeadModel(config).eval()
    model = from_gpt2(gpt2).eval()
    assert model.config.activation_function == activation
    assert to_gpt2(model).config.activation_function == activation
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert (model(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-5


def test_gpt2_gelu_new_becomes_the_fused_kernel_and_back(gpt2):
    assert gpt2.config.activation_function == "gelu_new"
    model = from_gpt2(gpt2)
    assert model.config.activation_function == "gelu_pytorch_tanh"
    assert to_gpt2(model).config.activation_function == "gelu_new"


@pytest.mark.parametrize("field, value", [("n_inner", 40), ("scale_attn_by_inverse_layer_idx", True)])
def test_gpt2_variants_we_cannot_represent_are_refused(field, value):
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, **{field: value})
    with pytest.raises(ValueError, match=field):
        from_gpt2(GPT2LMHeadModel(config))
