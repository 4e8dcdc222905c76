"""DPO (the book's chapter-7 bonus) through TRL's DPOTrainer: the rewards it reports are beta times the
log-probability ratios of the response tokens, recomputed here by hand; the reference is the base (the adapter
switched off, or a frozen copy); the folder a run leaves; bad input refused in one line."""

import json
import math

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForSequenceClassification
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.data import load_preferences, preference_pair
from hf_scratch_gpt.generation import generate_replies
from hf_scratch_gpt.recipes import DPOTrainingArguments, PreferenceArguments, dpo
from hf_scratch_gpt.tokenization import ALPACA_CHAT_TEMPLATE

from support import alpaca_char_tokenizer, save_tiny_model

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple"]
SPLITS = [0.6, 0.2, 0.2]  # of 40 pairs: 24 / 8 / 8


def pairs(n=40):
    """Repeat a word politely (chosen) or rudely (rejected): a preference a tiny model picks up in a few steps."""
    rows = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        row = {"instruction": "Repeat the word.", "input": word, "output": word,
               "chosen": f"{word}, please.", "rejected": f"{word}! Now!"}
        if i % 5 == 0:
            row = {"instruction": "Greet me.", "chosen": "Hello, friend.", "rejected": "Go away."}  # no input
        rows.append(row)
    return rows


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "preferences.json"
    path.write_text(json.dumps(pairs()), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer():
    return alpaca_char_tokenizer(pairs())


@pytest.fixture
def instruction_model(tmp_path, tokenizer):
    """A tiny model of ours with the Alpaca chat template, saved as `instruct` saves it."""
    return save_tiny_model(tmp_path / "sft", tokenizer)


def training(out, **overrides):
    options = dict(output_dir=str(out), max_steps=6, learning_rate=3e-2, per_device_train_batch_size=4,
                   per_device_eval_batch_size=8, eval_strategy="no", save_strategy="no", bf16=False,
                   disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    return DPOTrainingArguments(**{**options, **overrides})


def response_log_probs(model, tokenizer, pair, response: str, with_prompt=False) -> float:
    """Log-probability of a pair's response tokens (and end-of-text) after its prompt, written by the chat template;
    with `with_prompt`, of every token after the first, prompt included."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True)["input_ids"]
    whole = tokenizer.apply_chat_template(pair["prompt"] + pair[response])["input_ids"]
    assert whole[: len(prompt)] == prompt
    ids = torch.tensor([whole])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return log_probs[0 if with_prompt else len(prompt) - 1 :].sum().item()


class AdapterSwitch(TrainerCallback):
    """At the end of training (before the adapter is merged away), the logits of `ids` with the adapter on and off."""

    def __init__(self, ids):
        self.ids = ids

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.adapters = list(getattr(model, "peft_config", {}))
        if self.adapters:
            model.eval()
            with torch.no_grad():
                self.on = model(self.ids).logits
                with model.disable_adapter():
                    self.off = model(self.ids).logits


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_rewards_are_beta_times_the_response_log_probability_ratios(mode, data_file, instruction_model, tokenizer,
                                                                    tmp_path):
    out = tmp_path / "dpo"
    validation = [preference_pair(r) for r in pairs()[24:32]]
    ids = torch.tensor([tokenizer.apply_chat_template(validation[0]["prompt"] + validation[0]["chosen"])["input_ids"]])
    switch = AdapterSwitch(ids)
    metrics = dpo(PreferenceArguments(model=str(instruction_model), data=str(data_file), mode=mode,
                                      split_fractions=SPLITS, max_new_tokens=4), training(out, beta=0.5), [switch])
    assert metrics["base_eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # the model is its own reference
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.05 and metrics["eval_reward_accuracy"] > 0.5

    tokenizer = AutoTokenizer.from_pretrained(out)
    tuned = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(instruction_model).eval()
    rewards = {response: [0.5 * (response_log_probs(tuned, tokenizer, p, response)
                                 - response_log_probs(base, tokenizer, p, response)) for p in validation]
               for response in ("chosen", "rejected")}
    margins = [c - r for c, r in zip(rewards["chosen"], rewards["rejected"])]
    assert metrics["eval_reward_chosen"] == pytest.approx(sum(rewards["chosen"]) / 8, abs=1e-4)
    assert metrics["eval_reward_rejected"] == pytest.approx(sum(rewards["rejected"]) / 8, abs=1e-4)
    assert metrics["eval_reward_margin"] == pytest.approx(sum(margins) / 8, abs=1e-4)
    assert metrics["eval_reward_accuracy"] == sum(m > 0 for m in margins) / 8
    assert metrics["eval_loss"] == pytest.approx(sum(-torch.nn.functional.logsigmoid(torch.tensor(m)).item()
                                                     for m in margins) / 8, abs=1e-4)
    # only the response tokens count: the prompt's would change the rewards
    with_prompt = [0.5 * (response_log_probs(tuned, tokenizer, p, "chosen", True)
                          - response_log_probs(base, tokenizer, p, "chosen", True)) for p in validation]
    assert abs(sum(with_prompt) / 8 - metrics["eval_reward_chosen"]) > 1e-2

    if mode == "lora":  # the reference is the base itself, the adapter switched off: no second model
        assert switch.adapters == ["default"]
        with torch.no_grad():
            torch.testing.assert_close(switch.off, base(ids).logits, rtol=0, atol=0)
            assert not torch.allclose(switch.on, base(ids).logits, atol=1e-3)
    else:
        assert switch.adapters == []


def test_the_folder_a_run_leaves(data_file, instruction_model, tmp_path):
    out = tmp_path / "dpo"
    metrics = dpo(PreferenceArguments(model=str(instruction_model), data=str(data_file), split_fractions=SPLITS,
                                      max_new_tokens=6),
                  training(out, eval_strategy="steps", eval_steps=3, logging_steps=1))
    assert json.loads((out / "test_results.json").read_text()) == pytest.approx(metrics)
    assert {"test_loss", "test_reward_margin", "test_reward_accuracy"} <= metrics.keys()
    assert json.loads((out / "training_args.json").read_text())["beta"] == 0.1  # the book's, TRL's default

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == ALPACA_CHAT_TEMPLATE
    merged = AutoModelForCausalLM.from_pretrained(out)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(instruction_model), out / "adapter").eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)

    responses = json.loads((out / "test_responses.json").read_text())
    expected = pairs()[32:]
    assert [{k: r.get(k) for k in ("instruction", "chosen", "rejected")} for r in responses] == \
           [{k: r.get(k) for k in ("instruction", "chosen", "rejected")} for r in expected]
    prompts = [preference_pair(r)["prompt"] for r in responses]
    assert generate_replies(merged, tokenizer, prompts, max_new_tokens=6) == [r["model_response"] for r in responses]

    card = ModelCard.load(out / "README.md")
    assert {"dpo", "trl", "peft"} <= set(card.data.tags) and "adapter switched off" in card.text
    assert "| pairs cut to (tokens) | 256 |" in card.text  # the model's context
    assert f"{metrics['test_reward_accuracy']:.4f}" in card.text and f"{metrics['eval_loss']:.4f}" in card.text
    assert (out / "loss.png").stat().st_size > 1000 and (out / "adapter" / "README.md").is_file()
    assert "dpo run.yaml" in (out / "run.yaml").read_text()


def test_trl_pairs_pass_as_they_are(tmp_path, instruction_model, tokenizer):
    rows = [{"prompt": f"Say {w}:", "chosen": f" {w}, please.", "rejected": f" {w}!"} for w in WORDS * 2]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_preferences(path)
    assert [preference_pair(r) for r in dataset] == rows
    metrics = dpo(PreferenceArguments(model=str(instruction_model), data=str(path), split_fractions=[0.5, 0.25, 0.25],
                                      max_new_tokens=2), training(tmp_path / "dpo", max_steps=1))
    assert metrics["base_eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    responses = json.loads((tmp_path / "dpo" / "test_responses.json").read_text())
    assert [r["prompt"] for r in responses] == [r["prompt"] for r in rows[12:]]


def test_the_books_records(tmp_path):
    path = tmp_path / "book.json"
    path.write_text(json.dumps(pairs(5)))
    dataset = load_preferences(path)
    assert dataset[0]["input"] == "" and dataset[1]["output"] == "river"  # the first record has no input
    assert preference_pair(dataset[1]) == {
        "prompt": [{"role": "user", "content": "Repeat the word."}, {"role": "input", "content": "river"}],
        "chosen": [{"role": "assistant", "content": "river, please."}],
        "rejected": [{"role": "assistant", "content": "river! Now!"}]}


def test_identical_pairs_are_refused_or_left_out(tmp_path):
    rows = pairs(6)
    rows[3]["rejected"] = rows[3]["chosen"]
    path = tmp_path / "ties.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="1 record.* equal to the rejected one .*record 4.*--drop_identical_pairs"):
        load_preferences(path)
    kept = load_preferences(path, drop_identical_pairs=True)
    assert kept["chosen"] == [r["chosen"] for i, r in enumerate(rows) if i != 3]


def test_bad_input_gets_one_line(tmp_path, data_file, instruction_model, tokenizer, capsys):
    def run(model=instruction_model, data=data_file, *flags):
        code = main(["dpo", "--model", str(model), "--data", str(data), "--output_dir", str(tmp_path / "out"),
                     "--max_steps", "1", *flags])
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith("hf-scratch-gpt dpo: error: ") and not (tmp_path / "out").exists()
        return code, error

    no_rejected = tmp_path / "no_rejected.json"
    no_rejected.write_text(json.dumps([{"instruction": "a", "chosen": "b"}]))
    code, error = run(data=no_rejected)
    assert code == 1 and "without a 'rejected' field" in error

    no_template = tmp_path / "plain"
    AutoModelForCausalLM.from_pretrained(instruction_model).save_pretrained(no_template)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(no_template)
    code, error = run(model=no_template)
    assert code == 1 and "no chat template" in error and "hf-scratch-gpt instruct" in error

    classifier = tmp_path / "classifier"
    config = ScratchGPTConfig.from_pretrained(instruction_model, num_labels=2)
    ScratchGPTForSequenceClassification(config).save_pretrained(classifier)
    AutoTokenizer.from_pretrained(instruction_model).save_pretrained(classifier)
    code, error = run(model=classifier)
    assert code == 1 and "ScratchGPTForSequenceClassification, not a causal language model" in error

    rows = pairs()
    rows[7]["rejected"] = rows[7]["chosen"]
    ties = tmp_path / "ties.json"
    ties.write_text(json.dumps(rows))
    code, error = run(data=ties)
    assert code == 1 and "record 8" in error


def test_cli_dpo(data_file, instruction_model, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["dpo", "--model", str(instruction_model), "--data", str(data_file), "--mode", "full",
                 "--output_dir", str(out), "--max_steps", "2", "--split_fractions", "0.6", "0.2", "0.2",
                 "--max_new_tokens", "2", "--disable_tqdm", "true"]) == 0
    printed = capsys.readouterr().out
    assert f"Saved the preference-tuned model to {out} (base_eval_loss=0.6931" in printed
    assert not (out / "adapter").exists() and (out / "model.safetensors").is_file()
    results = json.loads((out / "test_results.json").read_text())
    assert f"eval_reward_accuracy={results['eval_reward_accuracy']:.4f}" in printed
