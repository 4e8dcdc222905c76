import json

import pytest

from hf_scratch_gpt import ScratchGPTConfig


def test_defaults_are_gpt2_124m():
    c = ScratchGPTConfig()
    assert (c.vocab_size, c.context_length, c.emb_dim, c.n_heads, c.n_layers) == (50257, 1024, 768, 12, 12)
    assert c.tie_word_embeddings is True
    assert c.model_type == "scratch_gpt"


def test_transformers_names_resolve_to_book_names():
    c = ScratchGPTConfig(emb_dim=64, n_layers=3, n_heads=8, context_length=128)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.max_position_embeddings) == (64, 3, 8, 128)
    c2 = ScratchGPTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    assert (c2.emb_dim, c2.n_layers, c2.n_heads, c2.context_length) == (96, 2, 4, 64)


def test_json_round_trip(tmp_path):
    c = ScratchGPTConfig(vocab_size=300, emb_dim=48, n_heads=6, qkv_bias=True, drop_rate=0.0, eos_token_id=299)
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "scratch_gpt" and saved["emb_dim"] == 48 and saved["qkv_bias"] is True
    loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "fields, field, rule",
    [
        (dict(vocab_size=0), "vocab_size", "positive"),
        (dict(context_length=-4), "context_length", "positive"),
        (dict(emb_dim=0), "emb_dim", "positive"),
        (dict(n_heads=0), "n_heads", "positive"),
        (dict(n_layers=0), "n_layers", "positive"),
        (dict(emb_dim=100, n_heads=12), "emb_dim", "divisible by n_heads=12"),
        (dict(drop_rate=1.0), "drop_rate", "[0, 1)"),
        (dict(drop_rate=-0.1), "drop_rate", "[0, 1)"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon", "> 0"),
        (dict(initializer_range=-0.02), "initializer_range", "> 0"),
        (dict(activation_function="gleu"), "activation_function", "gelu_pytorch_tanh"),
        (dict(vocab_size=10, pad_token_id=10), "pad_token_id", "vocab_size=10"),
        (dict(vocab_size=10, bos_token_id=-1), "bos_token_id", "vocab_size=10"),
        (dict(vocab_size=10, eos_token_id=[3, 12]), "eos_token_id", "vocab_size=10"),
    ],
)
def test_each_field_is_validated(fields, field, rule):
    with pytest.raises(ValueError) as error:
        ScratchGPTConfig(**fields)
    message = str(error.value)
    value = fields[field] if field in fields else None
    assert f"{field}={value!r}" in message and rule in message


def test_wrong_type_names_the_field():
    with pytest.raises(Exception, match="n_heads"):
        ScratchGPTConfig(n_heads="twelve")
