"""The tools users bring, each run on a folder this package wrote (`run_folders`): pipelines, chat
templates, streamers, remote code, bf16 loading, PEFT adapters, Trainer's resume, TRL's SFTTrainer and
lm-evaluation-harness."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TextIteratorStreamer,
    pipeline,
)

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from hf_scratch_gpt.data import instruction_messages
from hf_scratch_gpt.generation import generate_responses
from hf_scratch_gpt.recipes import classify

from support import INSTRUCTIONS, classification_run

IDS = [[5, 6, 7, 8, 9]]
TEXTS = ["WIN a FREE prize now!!! call 0800 3", "see you at lunch 2"]
MESSAGES = [{"role": "user", "content": "Repeat the word."}, {"role": "input", "content": "river"}]
CAUSAL = ("pretrain", "instruct", "convert")


def greedy(model, tokenizer, text, max_new_tokens=8):
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


def test_text_generation_pipeline_continues_text_and_chats(run_folders):
    generator = pipeline("text-generation", model=str(run_folders["pretrain"]))
    assert isinstance(generator.model, ScratchGPTForCausalLM)
    text = generator("ham", max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert text == greedy(generator.model, generator.tokenizer, "ham")

    # Messages go through the tokenizer's chat template (the book's prompt) and come back as a reply.
    chat = pipeline("text-generation", model=str(run_folders["instruct"]))
    reply = chat([MESSAGES], max_new_tokens=6, do_sample=False)[0][0]["generated_text"][-1]
    expected = generate_responses(chat.model, chat.tokenizer, [{"instruction": "Repeat the word.", "input": "river"}],
                                  max_new_tokens=6)[0]
    assert reply["role"] == "assistant" and reply["content"].strip() == expected


def test_text_classification_pipeline_names_labels_and_agrees_with_the_model(run_folders):
    classifier = pipeline("text-classification", model=str(run_folders["classify"]), top_k=None)
    assert isinstance(classifier.model, ScratchGPTForSequenceClassification)
    batch = classifier.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = classifier.model(**batch).logits.softmax(-1)
    for scores, expected in zip(classifier(TEXTS), probabilities):
        by_label = {score["label"]: score["score"] for score in scores}
        assert by_label == pytest.approx({"ham": expected[0].item(), "spam": expected[1].item()}, abs=1e-6)


def test_auto_tokenizer_chat_template_and_iterator_streamer(run_folders):
    folder = run_folders["instruct"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("### Instruction:\nRepeat the word.\n\n### Input:\nriver\n\n### Response:\n")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, max_new_tokens=10, do_sample=False,
                                                                 streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == greedy(model, tokenizer, prompt, max_new_tokens=10)


@pytest.mark.parametrize("kind", ["pretrain", "classify", "instruct", "convert"])
def test_bfloat16_loading_with_the_package_installed(run_folders, kind):
    auto = AutoModelForSequenceClassification if kind == "classify" else AutoModelForCausalLM
    full = auto.from_pretrained(run_folders[kind]).eval()
    half = auto.from_pretrained(run_folders[kind], torch_dtype=torch.bfloat16).eval()  # 5.x also takes `dtype`
    assert type(half) is type(full) and {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        full_logits, half_logits = full(torch.tensor(IDS)).logits, half(torch.tensor(IDS)).logits
    assert half_logits.dtype == torch.bfloat16
    torch.testing.assert_close(half_logits.float(), full_logits, atol=0.1, rtol=0.05)


def test_peft_loads_our_adapters_onto_their_base(run_folders):
    for kind, auto in (("classify", AutoModelForSequenceClassification), ("instruct", AutoModelForCausalLM)):
        folder = run_folders[kind]
        adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
        base = auto.from_pretrained(adapter_config["base_model_name_or_path"], **(
            {"num_labels": 2} if kind == "classify" else {}))
        adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()
        merged = auto.from_pretrained(folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(torch.tensor(IDS)).logits, merged(torch.tensor(IDS)).logits,
                                       rtol=0, atol=1e-5)


def test_trainer_resumes_a_lora_run_from_our_checkpoint(run_folders, tmp_path):
    root = run_folders["root"]
    args, training = classification_run(root, tmp_path / "resumed",
                                        resume_from_checkpoint=str(run_folders["classify"] / "checkpoint-4"))
    resumed = classify(args, training)
    uninterrupted = json.loads((run_folders["classify"] / "test_results.json").read_text())
    assert resumed["test_loss"] == pytest.approx(uninterrupted["test_loss"], abs=1e-5)
    state = json.loads((tmp_path / "resumed" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["log_history"][0]["step"] <= 4  # history carried over


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_scratch_gpt"] = None  # this process cannot import the package
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folders, ids, texts, messages = json.loads(sys.argv[1])
    out = {}
    for kind, folder in folders.items():
        auto = AutoModelForSequenceClassification if kind == "classify" else AutoModelForCausalLM
        model = auto.from_pretrained(folder, trust_remote_code=True)
        assert not type(model).__module__.startswith("hf_scratch_gpt"), type(model).__module__
        half = auto.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16)
        with torch.no_grad():
            result = {"logits": model(torch.tensor(ids)).logits.tolist(), "class": type(model).__name__,
                      "bf16": str(next(half.parameters()).dtype),
                      "bf16_logits": half(torch.tensor(ids)).logits.float().tolist()}
        if kind == "classify":
            result["pipeline"] = pipeline("text-classification", model=folder, trust_remote_code=True)(texts)
            adapter = PeftModel.from_pretrained(auto.from_pretrained(folders["pretrain"], trust_remote_code=True,
                                                                     num_labels=2), folder + "/adapter")
            with torch.no_grad():
                result["adapter_logits"] = adapter(torch.tensor(ids)).logits.tolist()
        else:
            generator = pipeline("text-generation", model=folder, trust_remote_code=True)
            result["pipeline"] = generator("ham", max_new_tokens=6, do_sample=False)[0]["generated_text"]
        if kind == "instruct":
            result["prompt"] = AutoTokenizer.from_pretrained(folder, trust_remote_code=True).apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        out[kind] = result
    print("RESULT", json.dumps(out))
    """
)


def test_every_folder_kind_loads_where_the_package_is_not_installed(run_folders, tmp_path):
    """Remote code: transformers, peft and the code files saved beside the weights, nothing else.
    Includes a sharded checkpoint."""
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(run_folders["pretrain"]).save_pretrained(sharded, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(run_folders["pretrain"]).save_pretrained(sharded)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").is_file()
    folders = {kind: str(run_folders[kind]) for kind in ("pretrain", "classify", "instruct", "convert")}
    folders["sharded"] = str(sharded)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, json.dumps([folders, IDS, TEXTS, MESSAGES])],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout  # nothing asked the user anything
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    remote = json.loads(line.removeprefix("RESULT "))

    for kind, folder in folders.items():
        auto = AutoModelForSequenceClassification if kind == "classify" else AutoModelForCausalLM
        model = auto.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(torch.tensor(IDS)).logits
        assert remote[kind]["class"] == type(model).__name__
        torch.testing.assert_close(torch.tensor(remote[kind]["logits"]), logits, rtol=0, atol=1e-5)
        assert remote[kind]["bf16"] == "torch.bfloat16"
        torch.testing.assert_close(torch.tensor(remote[kind]["bf16_logits"]), logits, atol=0.1, rtol=0.05)
        if kind == "classify":
            assert remote[kind]["pipeline"] == pipeline("text-classification", model=folder)(TEXTS)
            torch.testing.assert_close(torch.tensor(remote[kind]["adapter_logits"]), logits, rtol=0, atol=1e-5)
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            assert remote[kind]["pipeline"] == "ham" + greedy(model, tokenizer, "ham", max_new_tokens=6)
    assert remote["instruct"]["prompt"] == AutoTokenizer.from_pretrained(folders["instruct"]).apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False)


def test_trl_sft_trainer_learns_the_books_responses_only(run_folders, tmp_path):
    """TRL's `assistant_only_loss` finds the response through the chat template's generation markers: the
    same tokens the book's loss (and our `InstructionCollator`) scores."""
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(run_folders["instruct"])
    model = AutoModelForCausalLM.from_pretrained(run_folders["pretrain"])
    rows = Dataset.from_list([{"messages": instruction_messages(record)} for record in INSTRUCTIONS])
    config = SFTConfig(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=3, learning_rate=1e-2,
                       assistant_only_loss=True, bf16=False, use_cpu=True, max_length=256, logging_steps=1,
                       save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    for record, row in zip(INSTRUCTIONS, trainer.train_dataset):
        prompt = tokenizer.apply_chat_template(instruction_messages(record, with_response=False),
                                               add_generation_prompt=True)["input_ids"]
        response = tokenizer(record["output"] + tokenizer.eos_token).input_ids
        assert row["input_ids"] == prompt + response
        assert row["labels"] == [-100] * len(prompt) + response
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] * 0.8

    trainer.save_model(tmp_path / "sft")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(torch.tensor(IDS)).logits, trainer.model.eval()(torch.tensor(IDS)).logits)


LM_EVAL_TASK = """
task: scratch_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
LM_EVAL_DOCS = [{"question": "Say hello.", "choices": ["Hello!", "river", "stone"], "answer": 0},
                {"question": "Repeat the word: river", "choices": ["apple", "river"], "answer": 1},
                {"question": "spam or ham: WIN a FREE prize", "choices": ["spam", "ham"], "answer": 0}]


def test_lm_eval_harness_scores_a_saved_checkpoint_through_remote_code(run_folders, tmp_path):
    """`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` on a local task: lm-eval never
    imports this package, so the model comes from the code files in the folder. Its log-likelihoods are
    checked against our model's."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in LM_EVAL_DOCS))
    (tasks / "scratch_choice.yaml").write_text(LM_EVAL_TASK.format(data=data))
    folder = run_folders["pretrain"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={folder},trust_remote_code=True", "--tasks", "scratch_choice", "--include_path",
               str(tasks), "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out"),
               "--log_samples"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "hf_home").rglob("modeling_scratch_gpt.py"))  # loaded as remote code

    (samples_file,) = (tmp_path / "out").rglob("samples_scratch_choice_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    correct = 0
    for doc, sample in zip(LM_EVAL_DOCS, samples):
        expected = []
        for choice in doc["choices"]:
            context = tokenizer(doc["question"]).input_ids
            whole = tokenizer(doc["question"] + " " + choice).input_ids
            with torch.no_grad():
                logprobs = model(torch.tensor([whole])).logits[0, :-1].log_softmax(-1)
            expected.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        harness = [float(response[0][0]) for response in sample["resps"]]  # logged as strings
        assert harness == pytest.approx(expected, abs=1e-3)
        correct += max(range(len(expected)), key=expected.__getitem__) == doc["answer"]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    accuracy = json.loads(results_file.read_text())["results"]["scratch_choice"]["acc,none"]
    assert accuracy == pytest.approx(correct / len(LM_EVAL_DOCS))
