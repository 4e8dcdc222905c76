"""Instruction fine-tuning (chapter 7): Alpaca-style records in the book's prompt (the tokenizer's chat
template), a response-only loss, LoRA or full training with `transformers.Trainer`, then greedy
responses to the test split, scored."""

import json
import math
import os
from dataclasses import dataclass, field

from transformers import TrainerCallback

from ..artifacts import Card, save_model, write_adapter_card, write_card
from ..command import Command
from ..data import InstructionCollator, build_instruction_dataset, load_instructions
from ..evaluation import Judge, response_scores
from ..generation import generate_responses
from ..loading import load_config, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from ..tokenization import ALPACA_CHAT_TEMPLATE
from .arguments import RecipeTrainingArguments
from .finetuning import FineTuningArguments, check_whole_weights, context_max_length, make_trainable
from .runs import Produced, recipe_run, report, write_results
from .trainer import LanguageModelTrainer, ScoreBeforeTraining


@dataclass
class InstructionArguments(FineTuningArguments):
    """The base model, the instruction records, what is trained and how the result is judged."""

    data: str = field(metadata={"help": "Alpaca-style records (instruction, input, output): a JSON list, "
                                        "JSONL, folder or glob, or a Hub dataset."})
    split_fractions: list[float] = field(default_factory=lambda: [0.85, 0.05, 0.10],
                                         metadata={"help": "Train, validation and test fractions."})
    split_seed: int | None = field(default=None, metadata={"help": "Shuffle before splitting with this seed "
                                                                   "(default: keep the file's order, as the book)."})
    mask_prompt: bool = field(default=True, metadata={"help": "Score the response tokens only (the prompt "
                                                              "tokens get label -100)."})
    packing: bool = field(default=False, metadata={"help": "Train padding-free: each batch's records in one row, "
                                                           "positions restarting at each (the same loss as padded "
                                                           "batches, no compute spent on padding)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "Pad each batch (with --packing: each row, with a filler record) to a multiple of this many tokens, "
                "so that kernels tuned per shape (oneDNN's on CPUs) see few shapes (default: 8; 64 with --packing; "
                "1: no rounding)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest response generated for the test split."})
    judge_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint of a judge model "
                                                                  "that scores test responses 0-100, e.g. Ollama's "
                                                                  "http://localhost:11434/v1 (default: no judge)."})
    judge_model: str = field(default="llama3", metadata={"help": "The judge's model name."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens={self.max_new_tokens} is invalid: it must be a positive integer.")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise ValueError(f"--pad_to_multiple_of={self.pad_to_multiple_of} is invalid: it must be a positive "
                             "integer (1 for no rounding).")


@dataclass
class InstructionTrainingArguments(RecipeTrainingArguments):
    """The book's instruction fine-tuning: 2 epochs, validation loss every epoch, the last two checkpoints."""

    output_dir: str | None = field(default="scratch-gpt-instruct", metadata={"help": "Where the model goes."})
    num_train_epochs: float = field(default=2, metadata={"help": "Epochs over the training split."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep `prompt_length` for the collator."})


def instruct(args: InstructionArguments, training_args: InstructionTrainingArguments | None = None,
             callbacks: list[TrainerCallback] | None = None) -> Produced:
    """Fine-tune a model to follow instructions; returns the test metrics and, as `.files`, what it wrote.

    Metrics: `base_test_loss` (before training) and `test_loss` / `test_perplexity` (after) on the
    response tokens of the test split; `exact_match` and `word_f1` of the greedy responses; the mean
    `judge_score` when a judge is given. The output folder holds the merged model with its tokenizer
    (whose chat template is the book's Alpaca prompt), `adapter/` for LoRA, `test_responses.json`
    (each test record plus `model_response`), `test_results.json`, `loss.png` and a `README.md` card.
    `callbacks` join Trainer's (early stopping, trackers, ...).
    """
    training_args = training_args or InstructionTrainingArguments()
    with recipe_run(training_args, args, command="instruct", what="Instruction model") as run:
        judge = Judge(args.judge_url, args.judge_model, os.environ.get("OPENAI_API_KEY")) if args.judge_url else None
        if judge:
            judge.check()
        config = load_config(args.model)
        max_length = context_max_length(args.max_length, config)
        tokenizer = load_tokenizer(args.model, pad_with_eos=True, config=config)
        tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
        model = load_model(args.model, ScratchGPTForCausalLM, tokenizer, config=config)
        tokenizer.model_max_length = model.config.context_length
        with training_args.main_process_first(desc="formatting and tokenizing"):  # other ranks read datasets' cache
            datasets = build_instruction_dataset(load_instructions(args.data), tokenizer, tuple(args.split_fractions),
                                                 args.split_seed)
        model = make_trainable(model, args, "CAUSAL_LM", head="lm_head")
        test = datasets.get("test")
        multiple = args.pad_to_multiple_of or (64 if args.packing else 8)  # the defaults --help gives
        collator = InstructionCollator(tokenizer.pad_token_id, max_length, args.mask_prompt, multiple, args.packing)
        trainer = run.trainer(model, datasets, tokenizer, collator, callbacks, LanguageModelTrainer)
        check_whole_weights(trainer)
        if test is not None:
            trainer.add_callback(ScoreBeforeTraining(trainer, test, "base_test"))
        trainer.train(resume_from_checkpoint=run.checkpoint)
        metrics = {}
        if test is not None:
            # the base score, logged by ScoreBeforeTraining (absent from checkpoints of runs that did not log it)
            metrics = next(({k: v for k, v in entry.items() if k.startswith("base_test_")}
                            for entry in trainer.state.log_history if "base_test_loss" in entry), {})
            metrics.update(trainer.evaluate(test, metric_key_prefix="test"))
            metrics["test_perplexity"] = math.exp(min(metrics["test_loss"], 50.0))

        if trainer.is_world_process_zero():
            with run.final_folder(trainer) as staging:
                saved = save_model(model, tokenizer, staging)
                responses = []
                if test is not None:  # the greedy responses of the model as saved (LoRA merged)
                    responses, scores = _answer(saved, tokenizer, test, args, training_args, judge)
                    metrics = {**metrics, **scores}
                    (staging / "test_responses.json").write_text(
                        json.dumps(responses, indent=2, ensure_ascii=False) + "\n")
                card = write_card(staging, Card(
                    "instruct", saved, run.output_dir.name, data=args.data, base_model=args.model, mode=args.mode,
                    metrics=metrics, hyperparameters=run.hyperparameters(args.mode),
                    details=dict(mask_prompt=args.mask_prompt, packing=args.packing, examples=responses[:3],
                                 dataset_sizes={split: len(d) for split, d in datasets.items()})))
                if args.mode == "lora":
                    write_adapter_card(staging / "adapter", card, args.model)
                write_results(staging / "test_results.json", metrics)
    return run.produced(metrics)


def _answer(model, tokenizer, test, args, training_args, judge) -> tuple[list[dict], dict]:
    """Greedy responses to the test records, and their scores (and the judge's, when there is one)."""
    records = [{name: row[name] for name in ("instruction", "input", "output")} for row in test]
    replies = generate_responses(model, tokenizer, records, args.max_new_tokens,
                                 training_args.per_device_eval_batch_size)
    responses = [{**record, "model_response": reply} for record, reply in zip(records, replies)]
    scores = response_scores(replies, [r["output"] for r in records])
    if judge:
        for response in responses:
            response["judge_score"] = judge.score(response, response["model_response"])
        scores["judge_score"] = sum(r["judge_score"] for r in responses) / len(responses)
    return responses, scores


def _instruct_command(args, training_args) -> None:
    report(instruct(args, training_args), training_args, "the instruction model",
           ("base_test_loss", "test_loss", "word_f1"))


command = Command(_instruct_command, (InstructionArguments, InstructionTrainingArguments), flag_file=True)
