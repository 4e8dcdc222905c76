"""Instruction fine-tuning (chapter 7): the chat template, the collator (padded and packed), the recipe, the judge,
chat."""

import http.server
import json
import random
import shutil
import threading

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_scratch_gpt.cli import main
from hf_scratch_gpt.data import InstructionCollator, build_instruction_dataset, load_instructions
from hf_scratch_gpt.evaluation import Judge, response_scores, word_f1
from hf_scratch_gpt.generation import generate_responses
from hf_scratch_gpt.recipes import InstructionArguments, InstructionTrainingArguments, instruct
from hf_scratch_gpt.recipes.trainer import LanguageModelTrainer
from hf_scratch_gpt.tokenization import ALPACA_CHAT_TEMPLATE, ALPACA_PREAMBLE

from support import alpaca_char_tokenizer, save_tiny_model

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple"]


def records(n=60, seed=0):
    """A task a tiny model learns in a few steps: repeat the input word, or greet."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 3:
            word = rng.choice(WORDS)
            rows.append({"instruction": "Repeat the word.", "input": word, "output": word})
        else:
            rows.append({"instruction": "Say hello.", "input": "", "output": "Hello!"})
    return rows


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(records()), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer():
    return alpaca_char_tokenizer(records())


@pytest.fixture
def base_model(tmp_path, tokenizer):
    """A tiny untrained model of ours with a character tokenizer, saved as pretraining saves it."""
    return save_tiny_model(tmp_path / "base", tokenizer)


def test_chat_template_writes_the_books_prompt(tokenizer):
    with_input = [{"role": "user", "content": "Repeat the word."}, {"role": "input", "content": "apple"},
                  {"role": "assistant", "content": "apple"}]
    assert tokenizer.apply_chat_template(with_input, tokenize=False) == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nRepeat the word.\n\n### Input:\napple\n\n### Response:\n"
        "apple<|endoftext|>"
    )
    assert tokenizer.apply_chat_template(with_input[:1], tokenize=False, add_generation_prompt=True) == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nRepeat the word.\n\n### Response:\n"
    )
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(system, tokenize=False) == "Be brief.\n\n### Instruction:\nHi"
    with pytest.raises(Exception, match="not robot"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_load_instructions_from_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "A", "output": "b"},
                                                 {"instruction": "C", "input": None, "output": "d"}]))
    data = load_instructions(tmp_path / "a.json")
    assert data.column_names == ["instruction", "input", "output"]
    assert list(data) == [{"instruction": "A", "input": "", "output": "b"},
                          {"instruction": "C", "input": "", "output": "d"}]
    (tmp_path / "b.jsonl").write_text('{"instruction": "A", "input": "x", "output": "b"}\n')
    assert list(load_instructions(tmp_path / "b.jsonl")) == [{"instruction": "A", "input": "x", "output": "b"}]


def test_load_instructions_names_the_missing_field(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": "A", "output": "b"}]))
    with pytest.raises(ValueError, match=r"without an 'instruction' field; their fields are \['prompt', 'output'\]"):
        load_instructions(tmp_path / "c.json")


def test_instruction_dataset_splits_and_matches_the_chat_template(data_file, tokenizer):
    splits = build_instruction_dataset(load_instructions(data_file), tokenizer)
    assert {s: len(d) for s, d in splits.items()} == {"train": 51, "validation": 3, "test": 6}
    assert [r["output"] for r in splits["train"]][:3] == [r["output"] for r in records()[:3]]  # file order kept
    for row in splits["test"]:
        messages = [{"role": "user", "content": row["instruction"]}]
        if row["input"]:
            messages.append({"role": "input", "content": row["input"]})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert row["input_ids"][: row["prompt_length"]] == prompt
        response = {"role": "assistant", "content": row["output"]}
        full = tokenizer.apply_chat_template(messages + [response], tokenize=False)
        assert tokenizer.decode(row["input_ids"]) == full
        assert row["input_ids"][-1] == tokenizer.eos_token_id
    shuffled = build_instruction_dataset(load_instructions(data_file), tokenizer, (0.5, 0.25, 0.25), seed=1)
    assert {s: len(d) for s, d in shuffled.items()} == {"train": 30, "validation": 15, "test": 15}
    with pytest.raises(ValueError, match="validation split is empty"):
        build_instruction_dataset(load_instructions(data_file), tokenizer, (0.99, 0.005, 0.005))


EOS = 0  # pad == eos, as in GPT-2 and in our tokenizers
FEATURES = [{"input_ids": [5, 6, 7, 8, EOS], "prompt_length": 2}, {"input_ids": [5, 9, EOS], "prompt_length": 1}]


@pytest.mark.parametrize("options, input_ids, attention_mask, labels", [
    ({}, [[5, 6, 7, 8, EOS], [5, 9, EOS, EOS, EOS]], [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],
     [[-100, -100, 7, 8, EOS], [-100, 9, EOS, -100, -100]]),
    ({"mask_prompt": False}, [[5, 6, 7, 8, EOS], [5, 9, EOS, EOS, EOS]], [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],
     [[5, 6, 7, 8, EOS], [5, 9, EOS, -100, -100]]),
    ({"max_length": 3}, [[5, 6, 7], [5, 9, EOS]], [[1, 1, 1], [1, 1, 1]], [[-100, -100, 7], [-100, 9, EOS]]),
    ({"max_length": 2}, [[5, 6], [5, 9]], [[1, 1], [1, 1]], [[-100, -100], [-100, 9]]),
    ({"pad_to_multiple_of": 4}, [[5, 6, 7, 8, EOS, EOS, EOS, EOS], [5, 9, EOS, EOS, EOS, EOS, EOS, EOS]],
     [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
     [[-100, -100, 7, 8, EOS, -100, -100, -100], [-100, 9, EOS, -100, -100, -100, -100, -100]]),
])
def test_collator_masks_token_by_token(options, input_ids, attention_mask, labels):
    batch = InstructionCollator(pad_token_id=EOS, **options)(FEATURES)
    assert batch["input_ids"].tolist() == input_ids
    assert batch["attention_mask"].tolist() == attention_mask
    assert batch["labels"].tolist() == labels


def test_packing_collator_flattens_the_batch_with_the_same_targets():
    batch = InstructionCollator(pad_token_id=EOS, packing=True)(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, EOS, 5, 9, EOS]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, EOS, -100, 9, EOS]]  # the padded batch's targets
    assert "attention_mask" not in batch
    unmasked = InstructionCollator(pad_token_id=EOS, mask_prompt=False, max_length=4, packing=True)(FEATURES)
    assert unmasked["labels"].tolist() == [[-100, 6, 7, 8, -100, 9, EOS]]  # no target crosses into the next row
    rounded = InstructionCollator(pad_token_id=EOS, max_length=4, pad_to_multiple_of=16, packing=True)(FEATURES)
    assert rounded["input_ids"].tolist() == [[5, 6, 7, 8, 5, 9, EOS] + [EOS] * 9]  # fillers of at most 4 tokens
    assert rounded["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2] + [0, 1, 2, 3, 0, 1, 2, 3, 0]]
    assert rounded["labels"].tolist() == [[-100, -100, 7, 8, -100, 9, EOS] + [-100] * 9]  # out of the loss


def test_word_f1_and_exact_match():
    assert word_f1("The cat sat.", "the cat sat") == 1.0
    assert word_f1("a b", "c d") == 0.0
    assert word_f1("the cat", "the cat sat down") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert response_scores(["Paris.", "no idea"], ["paris", "Rome"]) == {"exact_match": 0.5, "word_f1": 0.5}


def test_batched_responses_equal_one_by_one(base_model):
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # wild weights write varied text instead of repeating one character
    rows = [records()[i] for i in (0, 1, 2, 4)]  # prompts of different lengths
    batched = generate_responses(model, tokenizer, rows, max_new_tokens=8, batch_size=4)
    alone = [generate_responses(model, tokenizer, [row], max_new_tokens=8)[0] for row in rows]
    assert batched == alone and any(batched)


class _JudgeStub(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that grades every answer 'Score: 85'."""

    questions = []

    def do_GET(self):
        self._reply({"data": [{"id": "llama3"}]} if self.path == "/v1/models" else None)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _JudgeStub.questions.append(body)
        self._reply({"choices": [{"message": {"role": "assistant", "content": "Score: 85"}}]})

    def _reply(self, payload):
        self.send_response(200 if payload else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(payload or {}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = http.server.HTTPServer(("127.0.0.1", 0), _JudgeStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_judge_scores_through_an_openai_compatible_endpoint(judge_url):
    judge = Judge(judge_url, "llama3")
    judge.check()
    assert judge.score({"instruction": "Name a colour.", "input": "", "output": "Blue."}, "Red.") == 85
    question = _JudgeStub.questions[-1]
    assert question["model"] == "llama3" and question["temperature"] == 0
    assert "Blue." in question["messages"][0]["content"] and "Red." in question["messages"][0]["content"]
    with pytest.raises(ValueError, match="Cannot reach the judge at http://127.0.0.1:9/v1"):
        Judge("http://127.0.0.1:9/v1").check()


def test_lora_instruct_end_to_end(data_file, tokenizer, base_model, tmp_path, judge_url):
    out = tmp_path / "tuned"
    args = InstructionArguments(model=str(base_model), data=str(data_file), lora_r=16, lora_alpha=32,
                                max_new_tokens=12, judge_url=judge_url)
    training = InstructionTrainingArguments(output_dir=str(out), num_train_epochs=3, learning_rate=1e-2,
                                            gradient_checkpointing=True, disable_tqdm=True,
                                            dataloader_pin_memory=False, seed=0)
    metrics = instruct(args, training)
    assert metrics["test_loss"] < metrics["base_test_loss"] - 0.2
    assert {"adapter/adapter_model.safetensors", "model.safetensors", "test_responses.json"} <= set(metrics.files)
    assert all((out / name).is_file() for name in metrics.files)
    test = build_instruction_dataset(load_instructions(data_file), tokenizer, (0.85, 0.05, 0.10))["test"]
    before = LanguageModelTrainer(model=AutoModelForCausalLM.from_pretrained(base_model), args=training,
                                  eval_dataset=test, data_collator=InstructionCollator(tokenizer.pad_token_id, 256))
    assert metrics["base_test_loss"] == pytest.approx(before.evaluate()["eval_loss"], abs=1e-6)
    assert metrics["test_perplexity"] == pytest.approx(torch.tensor(metrics["test_loss"]).exp().item(), rel=1e-6)

    responses = json.loads((out / "test_responses.json").read_text())
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in responses] == records()[54:]
    assert all(r["judge_score"] == 85 for r in responses) and metrics["judge_score"] == 85
    scores = response_scores([r["model_response"] for r in responses], [r["output"] for r in responses])
    assert metrics["exact_match"] == scores["exact_match"] and metrics["word_f1"] == scores["word_f1"]

    # the merged model and its tokenizer reproduce the saved responses; the adapter reproduces the merged logits
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == ALPACA_CHAT_TEMPLATE
    merged = AutoModelForCausalLM.from_pretrained(out)
    replies = generate_responses(merged, tokenizer, responses, max_new_tokens=12)
    assert replies == [r["model_response"] for r in responses]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), out / "adapter").eval()
    ids = tokenizer(responses[0]["instruction"], return_tensors="pt").input_ids
    torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)
    assert merged.lm_head.weight is merged.model.tok_emb.weight

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-generation" and "peft" in card.data.tags
    assert f"{metrics['test_loss']:.4f}" in card.text and (out / "loss.png").stat().st_size > 1000
    assert json.loads((out / "test_results.json").read_text()) == pytest.approx(metrics)
    adapter_card = ModelCard.load(out / "adapter" / "README.md")
    assert adapter_card.data.library_name == "peft" and f"base model `{base_model}`" in adapter_card.text
    assert (out / "adapter" / "loss.png").is_file() and (out / "adapter" / "chat_template.jinja").is_file()


def test_packed_training_logs_the_padded_runs_losses(data_file, base_model, tmp_path):
    """--packing: each batch's records in one row, no padding; the same targets, so the same losses at every
    logged step, evaluation included, and the same test responses."""
    def run(packing):
        out = tmp_path / f"packing_{packing}"
        metrics = instruct(InstructionArguments(model=str(base_model), data=str(data_file), max_new_tokens=6,
                                                packing=packing),
                           InstructionTrainingArguments(output_dir=str(out), num_train_epochs=2, learning_rate=1e-2,
                                                        logging_steps=1, per_device_train_batch_size=4,
                                                        disable_tqdm=True, dataloader_pin_memory=False, seed=0))
        last = max(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        history = json.loads((last / "trainer_state.json").read_text())["log_history"]
        return metrics, [entry.get("loss", entry.get("eval_loss")) for entry in history if "epoch" in entry
                         and ("loss" in entry or "eval_loss" in entry)]

    padded, padded_losses = run(False)
    packed, packed_losses = run(True)
    assert len(packed_losses) == len(padded_losses) > 10
    assert packed_losses[0] == pytest.approx(padded_losses[0], rel=1e-5)  # the same targets, the same loss
    assert packed["base_test_loss"] == pytest.approx(padded["base_test_loss"], rel=1e-5)
    # then rounding differences (sums in another order) grow a little with every step at this learning rate
    assert packed_losses == pytest.approx(padded_losses, rel=1e-3)
    assert packed["test_loss"] == pytest.approx(padded["test_loss"], rel=1e-3)
    assert "each batch packed padding-free" in (tmp_path / "packing_True" / "README.md").read_text()
    assert "padding-free" not in (tmp_path / "packing_False" / "README.md").read_text()


def test_a_resumed_run_reports_the_base_score_of_its_start(data_file, base_model, tmp_path):
    args = InstructionArguments(model=str(base_model), data=str(data_file), max_new_tokens=2)

    def run(out, **resume):
        return instruct(args, InstructionTrainingArguments(output_dir=str(out), num_train_epochs=2, learning_rate=1e-2,
                                                           disable_tqdm=True, dataloader_pin_memory=False, seed=0,
                                                           **resume))

    whole = run(tmp_path / "whole")
    first = min((tmp_path / "whole").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    shutil.copytree(first, tmp_path / "cut" / first.name)  # the same run, killed after its first epoch
    resumed = run(tmp_path / "cut", resume_from_checkpoint="last")
    assert resumed["base_test_loss"] == whole["base_test_loss"]  # from the checkpoint's log history
    assert resumed["test_loss"] == pytest.approx(whole["test_loss"], abs=1e-5)


def test_cli_instruct_then_chat(data_file, base_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    assert main(["instruct", "--model", str(base_model), "--data", str(data_file), "--mode", "full",
                 "--output_dir", str(out), "--num_train_epochs", "1", "--max_new_tokens", "4",
                 "--disable_tqdm", "true"]) == 0
    assert f"Saved the instruction model to {out}" in capsys.readouterr().out
    assert not (out / "adapter").exists() and (out / "test_responses.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    expected = generate_responses(model, tokenizer, [{"instruction": "Say hello.", "input": ""}], max_new_tokens=6)[0]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Say hello.\n\n"))
    assert main(["chat", str(out), "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == expected

    assert main(["instruct", "--model", str(base_model), "--data", str(data_file), "--lora_target_modules", "c_attn",
                 "--output_dir", str(tmp_path / "bad")]) == 1
    assert "LoRA target module(s) ['c_attn'] do not exist" in capsys.readouterr().err
