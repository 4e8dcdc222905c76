"""The book's own checkpoints <-> ours, against the book's own code (`pip install --no-deps llms-from-scratch`):
its `GPTModel` of several shapes, chapter 6's classifier, appendix E's LoRA, bf16, compiled and DDP-wrapped models,
and chapter 5's model-and-optimizer file."""

import json
from pathlib import Path

import pytest
import torch
from llms_from_scratch.appendix_e import replace_linear_with_lora
from llms_from_scratch.ch04 import GPTModel, generate_text_simple
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_scratch_gpt import (
    ScratchGPTConfig,
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    from_book,
    to_book,
)
from hf_scratch_gpt.book import book_config
from hf_scratch_gpt.cli import main

GPT2_FILES = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer"
TINY = dict(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)


def book_model(seed=0, classes=None, lora=None, **overrides) -> GPTModel:
    """The book's GPTModel, with its norms and biases moved off their initial values (a misplaced tensor shows
    in the logits); `classes`: chapter 6's head; `lora`: appendix E's (rank, alpha) LoRA, its B made non-zero."""
    torch.manual_seed(seed)
    model = GPTModel({**TINY, **overrides})
    if classes:
        model.out_head = torch.nn.Linear(model.out_head.in_features, classes)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("scale", "shift", "bias")):
                param.add_(torch.randn_like(param) * 0.1)
    if lora:
        replace_linear_with_lora(model, *lora)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("lora.B"):
                    param.normal_(std=0.05)
    return model.eval()


def ids(cfg=TINY, rows=2, n=10):
    return torch.randint(0, cfg["vocab_size"], (rows, n), generator=torch.Generator().manual_seed(1))


def assert_same_logits(ours, book, x, tolerance=1e-4):
    with torch.no_grad():
        logits = ours(input_ids=x, attention_mask=torch.ones_like(x)).logits
        expected = book(x)
    if logits.dim() == 2:  # a classifier: the last token's
        expected = expected[:, -1]
    assert logits.dtype == expected.dtype
    assert (logits.float() - expected.float()).abs().max().item() <= tolerance


VARIANTS = {
    "no qkv bias": dict(),
    "qkv bias": dict(qkv_bias=True),
    "wider, 3 layers, 8 heads, longer context": dict(emb_dim=64, n_heads=8, n_layers=3, context_length=40),
    "GPT-2's width, heads from the size table": dict(emb_dim=768, n_heads=12, n_layers=1, context_length=12),
}


@pytest.mark.parametrize("shape", VARIANTS.values(), ids=VARIANTS.keys())
def test_book_models_convert_with_the_same_logits_and_greedy_tokens(shape):
    book = book_model(**shape)
    cfg = {**TINY, **shape}
    given = {k: v for k, v in cfg.items() if k != "n_heads"} if shape.get("emb_dim") == 768 else cfg  # GPT_CONFIG_124M
    model = from_book(book.state_dict(), given)
    assert isinstance(model, ScratchGPTForCausalLM) and not model.config.tie_word_embeddings
    assert book_config(model.config) == cfg
    assert model.config.initialization == "book"
    x = ids(cfg)
    assert_same_logits(model, book, x)
    expected = generate_text_simple(book, x[:, :4], max_new_tokens=6, context_size=cfg["context_length"])
    with torch.no_grad():
        greedy = model.generate(x[:, :4], attention_mask=torch.ones_like(x[:, :4]), max_new_tokens=6,
                                do_sample=False, pad_token_id=0)
    assert torch.equal(greedy, expected)


@pytest.mark.parametrize("shape", VARIANTS.values(), ids=VARIANTS.keys())
def test_to_book_loads_strictly_with_identical_logits(shape):
    book = book_model(**shape)
    model = from_book(book.state_dict(), {"n_heads": {**TINY, **shape}["n_heads"]})
    back = GPTModel(book_config(model.config)).eval()
    back.load_state_dict(to_book(model), strict=True)
    x = ids()
    with torch.no_grad():
        assert torch.equal(back(x), book(x))


def test_a_model_of_ours_goes_to_the_book_and_back():
    """Ours in GPT-2's initialisation, tied, without biases: the book's model computes the same function."""
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(ScratchGPTConfig(**{**TINY, "qkv_bias": True}, bias=False)).eval()
    book = GPTModel(book_config(ours.config)).eval()
    book.load_state_dict(to_book(ours), strict=True)
    x = ids()
    assert_same_logits(ours, book, x)
    again = from_book(to_book(ours), {"n_heads": 4})
    assert again.config.tie_word_embeddings  # the head still equals the embedding: tied again
    assert_same_logits(again, book, x)


def test_a_config_object_gives_what_the_tensors_do_not_show():
    book = book_model()
    model = from_book(book.state_dict(), ScratchGPTConfig(**TINY, attn_implementation="eager"))
    assert (model.config.n_heads, model.config.drop_rate) == (4, 0.0)
    assert_same_logits(model, book, ids())


def test_to_book_refuses_what_the_book_cannot_compute():
    model = ScratchGPTForCausalLM(ScratchGPTConfig(**TINY, activation_function="gelu"))
    with pytest.raises(ValueError, match="tanh GELU"):
        to_book(model)


def test_the_chapter_6_classifier_converts_both_ways():
    book = book_model(classes=2)
    model = from_book(book.state_dict(), {"n_heads": 4})
    assert isinstance(model, ScratchGPTForSequenceClassification)
    assert (model.config.num_labels, model.config.classifier_bias) == (2, True)
    x = ids()
    assert_same_logits(model, book, x)
    back = book_model(seed=5, classes=2)
    back.load_state_dict(to_book(model), strict=True)
    with torch.no_grad():
        assert torch.equal(back(x), book(x))


def test_a_head_equal_to_the_embedding_is_tied():
    """The book loads GPT-2's weights by copying wte into out_head; a head trained apart stays apart."""
    book = book_model()
    with torch.no_grad():
        book.out_head.weight.copy_(book.tok_emb.weight)
    model = from_book(book.state_dict(), {"n_heads": 4})
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.tok_emb.weight.data_ptr()
    assert_same_logits(model, book, ids())


def test_bf16_checkpoints_stay_bf16():
    book = book_model().to(torch.bfloat16)
    model = from_book(book.state_dict(), {"n_heads": 4})
    assert model.dtype == torch.bfloat16
    assert_same_logits(model, book, ids(), tolerance=0.1)
    assert all(t.dtype == torch.bfloat16 for t in to_book(model).values())


def test_compiled_and_ddp_wrapped_models_and_the_chapter_5_file(tmp_path):
    """torch.compile prefixes `_orig_mod.`, DDP (and DataParallel) `module.`; chapter 5 saves model and optimizer."""
    book = book_model()
    wrapped = torch.compile(torch.nn.DataParallel(book))  # keys: _orig_mod.module.tok_emb.weight, ...
    assert next(iter(wrapped.state_dict())).startswith("_orig_mod.module.")
    optimizer = torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1)
    torch.save({"model_state_dict": wrapped.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               tmp_path / "model_and_optimizer.pth")
    model = from_book(tmp_path / "model_and_optimizer.pth", {"n_heads": 4})
    assert_same_logits(model, book, ids())


@pytest.mark.parametrize("classes", [None, 2], ids=["causal", "classifier"])
def test_appendix_e_lora_becomes_a_peft_adapter_with_the_same_outputs(tmp_path, classes):
    book = book_model(classes=classes, lora=(4, 8), qkv_bias=True)
    model = from_book(book.state_dict(), {"n_heads": 4}, lora_alpha=8)
    assert isinstance(model, PeftModel)
    x = ids()
    assert_same_logits(model, book, x)
    lora = model.peft_config["default"]
    assert (lora.r, lora.rank_pattern) == (4, {"qkv": 12})  # query, key and value side by side in our qkv
    model.save_pretrained(tmp_path / "adapter")
    base = from_book({k: v for k, v in book.state_dict().items() if ".lora." not in k}, {"n_heads": 4})
    assert_same_logits(PeftModel.from_pretrained(base, tmp_path / "adapter"), book, x)
    assert_same_logits(model.merge_and_unload(), book, x)


def test_lora_alpha_is_the_books_unless_given():
    book = book_model(lora=(2, 16))
    assert_same_logits(from_book(book.state_dict(), {"n_heads": 4}), book, ids())
    with pytest.raises(ValueError, match="no LoRA layers"):
        from_book(book_model().state_dict(), {"n_heads": 4}, lora_alpha=16)


def test_loading_is_safe(tmp_path, monkeypatch):
    book = book_model()
    torch.save(book, tmp_path / "whole_model.pth")  # a pickled module: code, not tensors
    with pytest.raises(ValueError, match="weights_only=True"):
        from_book(tmp_path / "whole_model.pth", {"n_heads": 4})
    torch.save({**book.state_dict(), "epoch": 3}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="'epoch': int, not a tensor"):
        from_book(tmp_path / "extra.pth", {"n_heads": 4})
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or load(*args, **kwargs))
    torch.save(book.state_dict(), tmp_path / "model.pth")
    from_book(tmp_path / "model.pth", {"n_heads": 4})
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


@pytest.mark.parametrize("source, config, message", [
    ("missing.pth", {"n_heads": 4}, "does not exist"),
    ({"weight": torch.zeros(2)}, None, "not the book's GPTModel"),
    ([1, 2], None, "got a list"),
    ("book", None, "give it (config={'n_heads': ...}, or --n_heads)"),
    ("book", {"n_heads": 4, "emb_dim": 64}, "config says emb_dim=64 but the checkpoint's tensors show 32"),
    ("book", {"n_heads": 5}, "divisible by n_heads=5"),
    ("book+extra", {"n_heads": 4}, "does not have: ['trf_blocks.0.att.rope']"),
])
def test_bad_checkpoints_are_refused_with_one_clear_line(tmp_path, source, config, message):
    if isinstance(source, str) and source.startswith("book"):
        extra = {"trf_blocks.0.att.rope": torch.zeros(2)} if "extra" in source else {}
        source = {**book_model().state_dict(), **extra}
    elif source == "missing.pth":
        source = tmp_path / source
    with pytest.raises(ValueError) as error:
        from_book(source, config)
    assert message in str(error.value) and "\n" not in str(error.value)


needs_gpt2_tokenizer = pytest.mark.skipif(not GPT2_FILES.is_dir(), reason="needs ../shared/data/gpt2-tokenizer")


@needs_gpt2_tokenizer
def test_convert_a_book_checkpoint_to_a_folder_and_back(tmp_path, capsys):
    cfg = {**TINY, "vocab_size": 50257}
    book = book_model(vocab_size=50257)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    out = tmp_path / "scratch"
    assert main(["convert", str(tmp_path / "model.pth"), str(out), "--n_heads", "4",
                 "--tokenizer", str(GPT2_FILES)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert "model.pth" in (out / "README.md").read_text() and json.loads((out / "config.json").read_text())[
        "eos_token_id"] == 50256
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("Every effort moves you", return_tensors="pt")
    expected = generate_text_simple(book, prompt.input_ids, max_new_tokens=5, context_size=cfg["context_length"])
    assert torch.equal(model.generate(**prompt, max_new_tokens=5, do_sample=False), expected)

    assert main(["convert", str(out), str(tmp_path / "back.pth"), "--to", "book"]) == 0
    assert str(book_config(model.config)) in capsys.readouterr().out
    back = GPTModel(cfg).eval()
    back.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    x = ids(cfg)
    with torch.no_grad():
        assert torch.equal(back(x), book(x))
    assert main(["convert", str(out), str(tmp_path / "back.pth"), "--to", "book"]) == 1  # never overwritten
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@needs_gpt2_tokenizer
def test_convert_an_appendix_e_lora_classifier(tmp_path):
    book = book_model(vocab_size=50257, classes=2, lora=(4, 8))
    torch.save(book.state_dict(), tmp_path / "lora.pth")
    out = tmp_path / "classifier"
    assert main(["convert", str(tmp_path / "lora.pth"), str(out), "--n_heads", "4", "--lora_alpha", "8",
                 "--tokenizer", str(GPT2_FILES)]) == 0
    x = ids({"vocab_size": 50257})
    assert_same_logits(AutoModelForSequenceClassification.from_pretrained(out), book, x)  # merged
    base = AutoModelForSequenceClassification.from_pretrained(out / "base")
    assert_same_logits(PeftModel.from_pretrained(base, out / "adapter"), book, x)
    assert "peft" in (out / "adapter" / "README.md").read_text()


def test_convert_flags_are_checked(tmp_path, capsys):
    torch.save(book_model().state_dict(), tmp_path / "model.pth")
    assert main(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out"), "--n_heads", "0"]) == 2
    assert main(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out")]) == 1  # width 32: heads unknown
    assert "--n_heads" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x.pth"), "--to", "book"]) == 1
    assert main(["convert", str(tmp_path / "model.pth"), str(tmp_path / "x.bin"), "--to", "book"]) == 1
    assert ".pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
