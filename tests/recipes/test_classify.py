"""Classification fine-tuning (chapter 6): the recipe, its data, its metrics, its folder and its card."""

import json
import random
import re

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.data import build_classification_dataset, load_labelled
from hf_scratch_gpt.recipes import ClassificationArguments, ClassificationTrainingArguments, classify
from hf_scratch_gpt.tokenization import train_tokenizer

SPAM = ["WIN a FREE prize now!!! call 0800", "FREE entry!!! txt WIN to 8000", "URGENT!!! claim your FREE cash"]
HAM = ["see you at lunch", "ok i am on my way home", "can we meet later today?"]


def messages(n_ham=60, n_spam=20, seed=0):
    rng = random.Random(seed)
    rows = [("ham", f"{rng.choice(HAM)} {i}") for i in range(n_ham)]
    rows += [("spam", f"{rng.choice(SPAM)} {i}") for i in range(n_spam)]
    rng.shuffle(rows)
    return rows


@pytest.fixture
def sms_tsv(tmp_path):
    path = tmp_path / "sms.tsv"
    lines = ["Label\tSMS"] + [f"{label}\t{text}" for label, text in messages()]
    lines += ['ham\t"quoted, and the quote never closes', "ham\tNA"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def base_model(tmp_path):
    """A tiny model of ours with a character tokenizer, saved as pretraining would save it."""
    text = "".join(t for _, t in messages()) + '"NA?'
    tokenizer = train_tokenizer([text], kind="char")
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tokenizer), context_length=48, emb_dim=32, n_heads=2, n_layers=2,
                              drop_rate=0.0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path / "base"
    ScratchGPTForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_args(base, data, out, **overrides):
    args = ClassificationArguments(model=str(base), data=str(data), text_column="SMS", label_column="Label",
                                   **overrides)
    training = ClassificationTrainingArguments(output_dir=str(out), num_train_epochs=6, learning_rate=3e-3,
                                               per_device_train_batch_size=8, disable_tqdm=True,
                                               dataloader_pin_memory=False, seed=3, logging_steps=2)
    return args, training


def test_load_labelled_reads_tsv_verbatim(sms_tsv):
    data = load_labelled(sms_tsv, "SMS", "Label")
    assert data.column_names == ["text", "label"] and len(data) == 82
    assert data[80]["text"] == '"quoted, and the quote never closes' and data[81]["text"] == "NA"


@pytest.mark.parametrize("source, columns, message", [
    ("missing.tsv", ("SMS", "Label"), "does not exist"),
    ("sms.tsv", ("Text", "Label"), "no column 'Text'"),
])
def test_load_labelled_errors(sms_tsv, source, columns, message):
    with pytest.raises(ValueError, match=message):
        load_labelled(sms_tsv.parent / source, *columns)


def test_splits_balance_and_truncation(sms_tsv, base_model):
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    data = load_labelled(sms_tsv, "SMS", "Label")
    splits = build_classification_dataset(data, tokenizer, max_length=12, balance=True, seed=5)
    assert splits["train"].features["labels"].names == ["ham", "spam"]
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [28, 4, 8]  # 40 balanced: 70/10/20
    labels = sum((list(splits[s]["labels"]) for s in splits), [])
    assert labels.count(0) == labels.count(1) == 20
    assert max(len(ids) for ids in splits["train"]["input_ids"]) == 12
    again = build_classification_dataset(data, tokenizer, max_length=12, balance=True, seed=5)
    assert list(again["test"]["input_ids"]) == list(splits["test"]["input_ids"])  # the seed fixes the split
    other = build_classification_dataset(data, tokenizer, max_length=12, balance=True, seed=6)
    assert list(other["test"]["input_ids"]) != list(splits["test"]["input_ids"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(fractions=(0.7, 0.2, 0.2)), "sum to 1"),
    (dict(fractions=(0.99, 0.005, 0.005)), "validation split is empty"),
    (dict(max_length=0), "max_length=0"),
])
def test_bad_split_settings(sms_tsv, base_model, kwargs, message):
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    data = load_labelled(sms_tsv, "SMS", "Label")
    with pytest.raises(ValueError, match=message):
        build_classification_dataset(data, tokenizer, **{"max_length": 16, **kwargs})


def test_a_single_class_is_refused(tmp_path, base_model):
    path = tmp_path / "one.csv"
    path.write_text("text,label\nhello,ham\nbye,ham\n")
    with pytest.raises(ValueError, match="single class"):
        build_classification_dataset(load_labelled(path), AutoTokenizer.from_pretrained(base_model), 16)


def test_a_label_the_train_split_never_shows_is_refused(tmp_path, base_model):
    path = tmp_path / "rare.csv"
    rows = [f"ham {i},ham" for i in range(10)] + [f"spam {i},spam" for i in range(10)] + ["odd one,other"]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    for seed in range(50):  # find a shuffle that puts the lone 'other' outside the train split
        try:
            build_classification_dataset(load_labelled(path), tokenizer, 16, seed=seed)
        except ValueError as error:
            assert re.search(r"The (validation|test) split has label\(s\) \['other'\] that the train split never "
                             "shows", str(error))
            return
    pytest.fail("no seed put the lone label outside the train split")


def test_lora_classifier_learns_and_saves_merged_and_adapter(sms_tsv, base_model, tmp_path):
    out = tmp_path / "clf"
    metrics = classify(*run_args(base_model, sms_tsv, out))
    assert metrics["test_accuracy"] >= 0.9
    assert {"test_precision_spam", "test_recall_ham", "test_f1_spam"} <= metrics.keys()
    assert json.loads((out / "test_results.json").read_text()) == metrics

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    assert set(adapter["target_modules"]) == {"qkv", "out_proj", "fc_in", "fc_out"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(merged, ScratchGPTForSequenceClassification)
    assert merged.config.id2label == {0: "ham", 1: "spam"}
    from peft import PeftModel

    base = ScratchGPTForSequenceClassification.from_pretrained(base_model, num_labels=2)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["WIN a FREE prize now!!! call 0800 7", "see you at lunch 3"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = merged(**batch).logits
        torch.testing.assert_close(logits, adapted(**batch).logits, atol=1e-5, rtol=1e-5)

    # The pipeline names the labels and agrees with the model.
    probabilities = logits.softmax(-1)
    classifier = pipeline("text-classification", model=str(out))
    results = classifier(["WIN a FREE prize now!!! call 0800 7", "see you at lunch 3"])
    assert [r["label"] for r in results] == [merged.config.id2label[i] for i in probabilities.argmax(-1).tolist()]
    assert [r["score"] for r in results] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-5)

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "peft" in card.data.tags
    assert "Confusion matrix" in card.text and f"{metrics['test_accuracy']:.4f}" in card.text


def test_cli_classify(sms_tsv, base_model, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["classify", "--model", str(base_model), "--data", str(sms_tsv), "--text_column", "SMS",
                 "--label_column", "Label", "--mode", "full", "--output_dir", str(out), "--num_train_epochs", "1",
                 "--disable_tqdm", "true"]) == 0
    assert f"Saved the classifier to {out}" in capsys.readouterr().out
    assert not (out / "adapter").exists() and (out / "model.safetensors").is_file()
    assert main(["classify", "--model", str(base_model), "--data", str(sms_tsv), "--label_column", "Kind",
                 "--text_column", "SMS", "--output_dir", str(tmp_path / "bad")]) == 1
    assert "no column 'Kind'" in capsys.readouterr().err
