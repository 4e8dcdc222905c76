"""`ScratchGPTConfig`: GPT-2 124M defaults, transformers' names, checks of every field, initialisation, round
trips."""

import json
import math

import pytest
import torch

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


def test_a_misspelt_field_is_refused_in_its_place_and_round_trips_beside_it(tmp_path, caplog):
    """`n_layer` for `n_layers` would leave the real field at its default: refused where the field is missing.
    An attribute set on a config (transformers' own tests set `layer_norm_eps`) is saved beside every field, and
    a folder save_pretrained wrote must load back: with a warning, the field's saved value used."""
    with pytest.raises(ValueError, match="got n_layer=3, a field it does not have; did you mean n_layers?"):
        ScratchGPTConfig(n_layer=3)
    c = ScratchGPTConfig(n_layers=2)
    c.layer_norm_eps = 1.0
    c.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["layer_norm_eps"] == 1.0
    with caplog.at_level("WARNING"):
        loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert "did you mean layer_norm_epsilon? Kept as an extra attribute" in caplog.text
    assert loaded.to_dict() == c.to_dict()
    assert (loaded.layer_norm_epsilon, loaded.layer_norm_eps, loaded.n_layers) == (1e-5, 1.0, 2)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["n_layer"] = saved.pop("n_layers")  # the typo in place of the field, in a file: still refused
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="did you mean n_layers?"):
        ScratchGPTConfig.from_pretrained(tmp_path)


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
        (dict(initialization="xavier"), "initialization", "one of gpt2, book"),
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


def _initialised(initialization=None, **fields):
    from hf_scratch_gpt import ScratchGPTForCausalLM

    torch.manual_seed(0)
    extra = {} if initialization is None else {"initialization": initialization}
    config = ScratchGPTConfig(vocab_size=500, context_length=64, emb_dim=128, n_heads=4, n_layers=4, qkv_bias=True,
                              tie_word_embeddings=False, **extra, **fields)
    return ScratchGPTForCausalLM(config)


def test_book_initialization_is_pytorchs_module_defaults():
    """What the book's GPTModel starts from: embeddings N(0, 1); linear weights and biases uniform in
    +-1/sqrt(fan_in) (Kaiming-uniform with a=sqrt(5)); LayerNorm scale 1, shift 0; nothing scaled down."""
    model = _initialised("book")
    block = model.model.trf_blocks[0]
    for embedding in (model.model.tok_emb.weight, model.model.pos_emb.weight):
        assert abs(embedding.std().item() - 1) < 0.05 and abs(embedding.mean().item()) < 0.05
    for linear in (block.att.qkv, block.att.out_proj, block.ff.fc_in, block.ff.fc_out, model.lm_head):
        bound = 1 / math.sqrt(linear.in_features)
        weight = linear.weight
        assert weight.abs().max().item() <= bound and weight.abs().max().item() > 0.99 * bound
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.03 * bound  # a uniform's spread
        if linear.bias is not None:
            assert linear.bias.abs().max().item() <= bound and linear.bias.std().item() > 0.4 * bound
    assert torch.equal(block.norm1.weight, torch.ones(128)) and torch.equal(block.norm1.bias, torch.zeros(128))


def test_gpt2_initialization_stays_the_default():
    model = _initialised()
    assert model.config.initialization == "gpt2"
    block = model.model.trf_blocks[0]
    assert abs(model.model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(block.att.qkv.weight.std().item() - 0.02) < 0.002 and not block.att.qkv.bias.any()
    assert abs(block.ff.fc_out.weight.std().item() - 0.02 / math.sqrt(8)) < 0.001  # residual writers scaled


def test_initialization_is_saved_and_loaded_and_old_configs_read_as_gpt2(tmp_path):
    from hf_scratch_gpt import ScratchGPTForCausalLM

    model = _initialised("book")
    model.save_pretrained(tmp_path / "book")
    assert json.loads((tmp_path / "book" / "config.json").read_text())["initialization"] == "book"
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path / "book")
    assert loaded.config.initialization == "book"
    for key, tensor in model.state_dict().items():  # loading initialises nothing it has weights for
        assert torch.equal(loaded.state_dict()[key], tensor), key
    fields = json.loads((tmp_path / "book" / "config.json").read_text())
    del fields["initialization"]  # a config saved before the field existed
    (tmp_path / "book" / "config.json").write_text(json.dumps(fields))
    assert ScratchGPTConfig.from_pretrained(tmp_path / "book").initialization == "gpt2"


def test_pretrain_takes_the_initialization_flag():
    from hf_scratch_gpt.recipes import ModelArguments

    assert ModelArguments(initialization="book").config_fields()["initialization"] == "book"
    with pytest.raises(ValueError, match="initialization='xavier' is invalid"):
        ModelArguments(initialization="xavier")
