"""`export`: our models as GGUF files that llama.cpp and Ollama run (read back here by transformers' own GGUF
reader, and in the slow test by llama.cpp itself), with an Ollama Modelfile, or as plain GPT-2 folders.

The slow test needs llama.cpp's Python binding, built from source once (20 minutes on two cores):
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
        pip install llama-cpp-python==0.3.36
    HF_HUB_OFFLINE=1 python -m pytest -m slow tests/test_export.py
"""

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.export import GGUF_DTYPES, GGUF_FILE, MODELFILE, export_gguf
from hf_scratch_gpt.tokenization import ALPACA_CHAT_TEMPLATE, ALPACA_PREAMBLE, gpt2_tokenizer, train_tokenizer

from support import memorised, tiny_config, tiny_gpt2

CORPUS = ("Every effort moves you forward. I'll say it's done; we've seen 3 cats and 42 dogs.\n"
          "Caf\u00e9 cr\u00e8me, na\u00efve \u00fcber, \u4e2d\u6587\u6587\u672c, emoji \U0001f600 \U0001f680!\n"
          "\t  indented  text   with\ttabs\n\n") * 20
TEXTS = ["Every effort moves you", "  two  leading spaces and trailing   ", "\n\n\ttabs\tand\nnew lines\n",
         "I'll, you've, she's, 'quoted'", "caf\u00e9 \u4e2d\u6587 \U0001f600\U0001f680 e\u0301 \u00df\u0130",
         "x<|endoftext|>y <|endoftext|>", "<|endoftext|>", "numbers 123 4567.89 0x1F", "", " ", "!!! ??? ...",
         "unseen words: zyxwvut qqq \u0416\u0438\u0437\u043d\u044c"]
CONTEXT = 32
PADDING = 13  # ids past the tokenizer's last: the model's vocabulary is often rounded up


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE as GPT-2's, built as the package builds GPT-2's own (from vocab.json and merges.txt)."""
    folder = tmp_path_factory.mktemp("bpe")
    train_tokenizer([CORPUS], vocab_size=400).backend_tokenizer.model.save(str(folder))
    return gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt")


def random_model(tokenizer, **overrides) -> ScratchGPTForCausalLM:
    """Every tensor non-trivial (biases and norms too), so that any misplaced one shows in the logits."""
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = tiny_config(vocab_size=len(tokenizer) + PADDING, context_length=CONTEXT, eos_token_id=eos,
                         bos_token_id=eos, pad_token_id=eos, **overrides)
    model = ScratchGPTForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def saved(folder, model, tokenizer, chat_template=None):
    tokenizer.chat_template = chat_template
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def read_gguf(folder):
    """The GGUF file as transformers reads it. Its reader maps the file's context length to GPT2Config.n_ctx,
    which GPT-2 does not use; n_positions (the position embedding's size) is given as what the file holds."""
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32, n_positions=CONTEXT)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def stored_as(model, dtype: str) -> ScratchGPTForCausalLM:
    """`model` with each weight matrix rounded as the GGUF file stores it (by gguf's own quantize/dequantize;
    q8_0 rows its blocks of 32 do not divide in f16); vectors and the position embedding stay float32."""
    rounded = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 2 and name != "model.pos_emb.weight":
            qtype = GGUF_DTYPES[dtype][1] if tensor.shape[1] % 32 == 0 else gguf.GGMLQuantizationType.F16
            rounded[name] = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(tensor.numpy(), qtype), qtype))
    copy = type(model)(model.config).eval()
    copy.load_state_dict({**model.state_dict(), **rounded})
    return copy


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("dtype", list(GGUF_DTYPES))
def test_gguf_computes_our_logits(bpe, tmp_path, dtype, tied):
    """f32 stores our weights as they are: logits within 1e-4. f16 keeps 11 significant bits of each weight, and
    q8_0 8-bit integers times one f16 scale per block of 32; so the file can only equal our model with its
    weights rounded that way. We round ours the same way (gguf's quantize and dequantize) and ask for the same
    1e-4: the file holds exactly our weights at the format's precision. (The rounding itself moves these logits
    by ~1e-4 in f16 and ~4e-3 in q8_0.)"""
    model = random_model(bpe, tie_word_embeddings=tied, qkv_bias=tied)  # untied: also the book's qkv_bias=False
    export_gguf(saved(tmp_path / "model", model, bpe), tmp_path / "out", dtype)
    theirs, _ = read_gguf(tmp_path / "out")
    assert theirs.config.tie_word_embeddings == tied
    ids = torch.tensor([bpe("Every effort moves you forward, caf\u00e9 \U0001f600").input_ids[:CONTEXT]])
    ids[0, -1] = len(bpe) + PADDING - 1  # an id past the tokenizer's: the padded vocabulary is exported too
    with torch.no_grad():
        expected, got = stored_as(model, dtype)(ids).logits, theirs(ids).logits
    assert (got - expected).abs().max().item() <= 1e-4


def test_q8_0_keeps_in_f16_the_matrices_whose_rows_its_blocks_do_not_divide(bpe, tmp_path, caplog):
    model = random_model(bpe, emb_dim=48)  # rows of 48 values, and of 192 in the feed-forward's second layer
    with caplog.at_level("WARNING"):
        path = export_gguf(saved(tmp_path / "model", model, bpe), tmp_path / "out", "q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert (types["token_embd.weight"], types["blk.0.ffn_up.weight"], types["blk.0.ffn_down.weight"]) == (
        "F16", "F16", "Q8_0")
    assert "which q8_0 cannot store: kept in f16" in caplog.text
    theirs, _ = read_gguf(tmp_path / "out")
    ids = torch.tensor([bpe("Every effort moves you").input_ids])
    with torch.no_grad():
        assert (theirs(ids).logits - stored_as(model, "q8_0")(ids).logits).abs().max().item() <= 1e-4


def test_a_gpt2_folder_exports_too(bpe, tmp_path):
    gpt2 = tiny_gpt2(vocab_size=len(bpe), n_positions=CONTEXT, eos_token_id=bpe.eos_token_id)
    export_gguf(saved(tmp_path / "gpt2", gpt2, bpe), tmp_path / "out")
    theirs, _ = read_gguf(tmp_path / "out")
    ids = torch.tensor([bpe("Every effort moves you").input_ids])
    with torch.no_grad():
        assert (theirs(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-4


def test_gguf_tokenizer_gives_our_ids(bpe, tmp_path):
    export_gguf(saved(tmp_path / "model", random_model(bpe), bpe, ALPACA_CHAT_TEMPLATE), tmp_path / "out")
    _, theirs = read_gguf(tmp_path / "out")
    assert [theirs(text).input_ids for text in TEXTS] == [bpe(text).input_ids for text in TEXTS]
    ids = bpe(" ".join(TEXTS)).input_ids
    assert theirs.decode(ids) == bpe.decode(ids)
    assert (theirs.eos_token, theirs.eos_token_id) == ("<|endoftext|>", bpe.eos_token_id)
    assert theirs.chat_template == ALPACA_CHAT_TEMPLATE
    assert len(theirs) == len(bpe) + PADDING  # the placeholders that pad the vocabulary to the model's


def test_a_trained_bpe_exports_and_says_where_llama_cpp_splits_otherwise(tmp_path, caplog):
    """`train_tokenizer`'s BPE cuts runs of 64 non-space characters, which llama.cpp's GPT-2 split keeps whole."""
    trained = train_tokenizer([CORPUS], vocab_size=400)
    with caplog.at_level("WARNING"):
        export_gguf(saved(tmp_path / "model", random_model(trained), trained), tmp_path / "out")
    assert "cuts runs of 64 non-space characters" in caplog.text
    _, theirs = read_gguf(tmp_path / "out")
    assert [theirs(text).input_ids for text in TEXTS] == [trained(text).input_ids for text in TEXTS]


def test_modelfile_of_an_instruction_model_prompts_as_its_chat_template(bpe, tmp_path):
    export_gguf(saved(tmp_path / "model", random_model(bpe), bpe, ALPACA_CHAT_TEMPLATE), tmp_path / "out", "q8_0")
    modelfile = (tmp_path / "out" / MODELFILE).read_text()
    assert modelfile == (
        f'FROM ./{GGUF_FILE}\n'
        f'TEMPLATE """{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{ALPACA_PREAMBLE}{{{{ end }}}}\n\n'
        '### Instruction:\n{{ .Prompt }}\n\n### Response:\n"""\n'
        'PARAMETER stop "<|endoftext|>"\nPARAMETER temperature 0\nPARAMETER seed 123\n'
        f'PARAMETER num_ctx {CONTEXT}\n')
    # What Ollama renders, with and without a system message, is what the chat template writes.
    template = modelfile.split('"""')[1]
    for system, branch in ((None, ALPACA_PREAMBLE), ("Answer briefly.", "{{ .System }}")):
        ollama = template.replace("{{ if .System }}{{ .System }}{{ else }}" + ALPACA_PREAMBLE + "{{ end }}", branch)
        messages = [{"role": "system", "content": system}] if system else []
        expected = bpe.apply_chat_template(messages + [{"role": "user", "content": "Name a cat."}],
                                           add_generation_prompt=True, tokenize=False)
        assert ollama.replace("{{ .System }}", system or "").replace("{{ .Prompt }}", "Name a cat.") == expected


def test_modelfile_of_a_base_model_continues_the_prompt(bpe, tmp_path):
    export_gguf(saved(tmp_path / "model", random_model(bpe), bpe), tmp_path / "out")
    lines = (tmp_path / "out" / MODELFILE).read_text().splitlines()
    assert lines[:3] == [f"FROM ./{GGUF_FILE}", 'TEMPLATE """{{ .Prompt }}"""', 'PARAMETER stop "<|endoftext|>"']
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [MODELFILE, GGUF_FILE]


def test_cli_exports_gguf_and_a_plain_gpt2_folder(bpe, tmp_path, capsys):
    model = random_model(bpe)
    source = saved(tmp_path / "model", model, bpe)
    assert main(["export", source, str(tmp_path / "gguf"), "--dtype", "f16"]) == 0
    assert f"ollama create NAME -f {tmp_path / 'gguf' / MODELFILE}" in capsys.readouterr().out
    assert gguf.GGUFReader(tmp_path / "gguf" / GGUF_FILE).get_tensor(0).tensor_type == gguf.GGMLQuantizationType.F16

    assert main(["export", source, str(tmp_path / "gpt2"), "--format", "gpt2"]) == 0
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config  # no custom code to trust
    gpt2 = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval()
    assert isinstance(gpt2, GPT2LMHeadModel)
    ids = torch.tensor([bpe("Every effort moves you").input_ids])
    with torch.no_grad():
        assert (gpt2(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2")("caf\u00e9").input_ids == bpe("caf\u00e9").input_ids


@pytest.fixture(scope="module")
def sources(bpe, tmp_path_factory):
    """Model folders that cannot be exported to GGUF, or not at all."""
    root = tmp_path_factory.mktemp("sources")
    classifier = ScratchGPTForSequenceClassification(tiny_config(num_labels=2))
    chars = train_tokenizer([CORPUS], kind="char")
    random_model(bpe).save_pretrained(root / "bare")
    return {"classifier": saved(root / "classifier", classifier, bpe), "GPT-2": saved(root / "gpt2", tiny_gpt2(), bpe),
            "exact GELU": saved(root / "gelu", random_model(bpe, activation_function="gelu"), bpe),
            "char tokenizer": saved(root / "chars", random_model(chars), chars),
            "no tokenizer": str(root / "bare"),
            "ours": saved(root / "ours", random_model(bpe), bpe), "missing": str(root / "missing")}


@pytest.mark.parametrize("source, flags, message", [
    ("classifier", [], "has no language-model head"),
    ("classifier", ["--format", "gpt2"], "has no language-model head"),
    ("GPT-2", ["--format", "gpt2"], "holds a GPT-2 model already"),
    ("exact GELU", [], "activation_function='gelu'"),
    ("char tokenizer", [], "not byte-level BPE"),
    ("no tokenizer", [], "has no tokenizer"),
    ("missing", [], "does not exist"),
    ("ours", ["--dtype", "q4_0"], "invalid choice"),
    ("ours", ["--format", "gpt2", "--dtype", "f16"], "--dtype applies to --format gguf only"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_cli_refuses_what_it_cannot_export_in_one_line_and_writes_nothing(sources, tmp_path, capsys, source, flags,
                                                                          message):
    assert main(["export", sources[source], str(tmp_path / "out"), *flags]) != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hf-scratch-gpt export: error:") and message in error
    assert not (tmp_path / "out").exists()


def test_an_existing_destination_is_refused_and_a_failed_export_leaves_nothing(sources, tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        export_gguf(sources["ours"], tmp_path / "full")
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["notes.txt"]

    def fail_halfway(gpt2, vocabulary, path, dtype, name):
        path.write_bytes(b"GGUF half")
        raise OSError("disk full")

    monkeypatch.setattr("hf_scratch_gpt.export.write_gguf", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(sources["ours"], tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="GGUF dtype 'q4_0' is unknown"):
        export_gguf(sources["ours"], tmp_path / "new", "q4_0")


@pytest.mark.slow
def test_llama_cpp_tokenizes_and_continues_greedily_as_we_do(bpe, tmp_path, monkeypatch):
    """llama.cpp itself (through llama-cpp-python) runs the exported file: the same token ids for every text, and
    the same greedy continuation as ours, token for token, to the end of the context, in every dtype (ours with
    its weights rounded as the file stores them)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    # llama.cpp built natively on a CPU with AMX moves q8_0 matrices into its AMX kernels, which crash on our test
    # machine (a virtual machine), on the q8_0 files llama.cpp's own quantizer writes too. Its plain CPU kernels,
    # those of every other CPU, compute the same function: keep the weights in them.
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def plain_cpu_kernels():
        params = default_params()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", plain_cpu_kernels)
    model = memorised(random_model(bpe, tie_word_embeddings=False), bpe(CORPUS).input_ids, CONTEXT, lr=1e-2)
    source = saved(tmp_path / "model", model, bpe, ALPACA_CHAT_TEMPLATE)
    for dtype in GGUF_DTYPES:
        path = export_gguf(source, tmp_path / dtype, dtype)
        llama = llama_cpp.Llama(str(path), n_ctx=CONTEXT, n_threads=1, logits_all=True, verbose=False)
        for text in TEXTS:
            assert llama.tokenize(text.encode(), add_bos=False, special=True) == bpe(text).input_ids, (dtype, text)
        ours = stored_as(model, dtype)
        for prompt in ("Every effort moves you", "caf\u00e9 \U0001f600 I'll", "Name a cat."):
            ids = bpe(prompt).input_ids
            expected = ours.generate(torch.tensor([ids]), max_new_tokens=CONTEXT - len(ids), do_sample=False,
                                     eos_token_id=None, pad_token_id=bpe.eos_token_id)[0, len(ids):].tolist()
            llama.reset()
            llama.eval(ids)
            continuation = []
            while len(ids) + len(continuation) < CONTEXT:
                continuation.append(int(llama.scores[llama.n_tokens - 1].argmax()))
                if len(ids) + len(continuation) < CONTEXT:
                    llama.eval(continuation[-1:])
            assert continuation == expected, (dtype, prompt)
