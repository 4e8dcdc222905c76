"""Preference tuning with DPO (the book's chapter-7 bonus): TRL's `DPOTrainer` on an instruction model of ours,
its prompts written by the model's chat template, LoRA by default with the adapter switched off as the reference
(no second model in memory), a frozen copy as the reference otherwise; then greedy responses to the test split."""

import copy
import json
import logging
from dataclasses import dataclass, field

from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from ..artifacts import Card, save_model, write_adapter_card, write_card
from ..command import Command
from ..data import load_preferences, preference_pair, split_dataset
from ..generation import generate_replies
from ..loading import load_config, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from .arguments import RecipeTrainingArguments
from .finetuning import FineTuningArguments, check_whole_weights, context_max_length, lora_config, make_trainable
from .runs import Produced, recipe_run, report, write_results

logger = logging.getLogger(__name__)

# What an evaluation reports (TRL's names, under the prefix eval_ or test_) and the names the results give them.
PREFERENCE_METRICS = {"loss": "loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                      "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected"}


@dataclass
class PreferenceArguments(FineTuningArguments):
    """The instruction model, the preference pairs, what is trained and how the result is judged."""

    model: str = field(metadata={"help": "An instruction model (a folder `instruct` wrote): its tokenizer's chat "
                                         "template writes the prompts."})
    data: str = field(metadata={"help": "Preference pairs: the book's records (instruction, input, chosen, rejected) "
                                        "or TRL's (prompt, chosen, rejected); a JSON list, JSONL, folder or glob, or "
                                        "a Hub dataset."})
    split_fractions: list[float] = field(default_factory=lambda: [0.85, 0.05, 0.10],
                                         metadata={"help": "Train, validation and test fractions."})
    split_seed: int | None = field(default=None, metadata={"help": "Shuffle before splitting with this seed "
                                                                   "(default: keep the file's order, as the book)."})
    drop_identical_pairs: bool = field(default=False, metadata={
        "help": "Leave out pairs whose chosen and rejected responses are equal (default: refuse them)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest response generated for the test split."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens={self.max_new_tokens} is invalid: it must be a positive integer.")


@dataclass
class DPOTrainingArguments(RecipeTrainingArguments, DPOConfig):
    """The book's DPO (beta 0.1, AdamW 5e-6 with weight decay 0.01, one epoch) with every knob of TRL's
    `DPOConfig`; the validation metrics also before the first step."""

    output_dir: str | None = field(default="scratch-gpt-dpo", metadata={"help": "Where the model goes."})
    num_train_epochs: float = field(default=1, metadata={"help": "Epochs over the training split."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate before training (the starting point)."})
    # TRL averages its reward metrics over batches, each batch's mean weighing alike: only batches of one pair make
    # the reward accuracy the share of pairs (a short last batch would weigh as much as a full one).
    per_device_eval_batch_size: int = field(default=1, metadata={
        "help": "Pairs per evaluation batch (1: the reward metrics are exact shares of the pairs)."})
    # Off, as in TrainingArguments (TRL turns it on); None, not False: transformers 5.24 renamed it
    # activation_checkpointing and warns when the old name is given a value.
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Recompute activations in the backward pass (saves memory, costs time)."})
    max_length: int | None = field(default=None, init=False)  # the recipe's --max_length (the model's context)


def dpo(args: PreferenceArguments, training_args: DPOTrainingArguments | None = None,
        callbacks: list[TrainerCallback] | None = None) -> Produced:
    """Tune an instruction model on preference pairs with DPO; returns the metrics and, as `.files`, what it wrote.

    Metrics on the validation split: `eval_loss` (the DPO loss; `base_eval_loss` before training), the mean
    rewards `eval_reward_chosen` / `eval_reward_rejected` (beta times the log-probability ratio of a response to the
    reference), `eval_reward_margin` (chosen minus rejected) and `eval_reward_accuracy` (the share of pairs whose
    chosen response has the higher reward); the same on the test split (`test_...`). The output folder holds the
    merged model with its tokenizer, `adapter/` for LoRA, `test_responses.json` (each test record plus
    `model_response`), `test_results.json`, `loss.png` (loss and rewards) and a `README.md` card.
    """
    training_args = training_args or DPOTrainingArguments()
    with recipe_run(training_args, args, command="dpo", what="Preference-tuned model") as run:
        config = load_config(args.model)
        _check_causal_lm(config, args.model)
        tokenizer = load_tokenizer(args.model, pad_with_eos=True, config=config)
        if tokenizer.chat_template is None:
            raise ValueError(f"{args.model} has no chat template to write the prompts with; DPO tunes an instruction "
                             "model: train one with `hf-scratch-gpt instruct` first.")
        training_args.max_length = run.trainer_args.max_length = context_max_length(args.max_length, config)
        with training_args.main_process_first(desc="reading the pairs"):  # other ranks read datasets' cache
            records = split_dataset(load_preferences(args.data, args.drop_identical_pairs),
                                    tuple(args.split_fractions), args.split_seed)
            pairs = records.map(preference_pair, remove_columns=records["train"].column_names)
        model = load_model(args.model, ScratchGPTForCausalLM, tokenizer, config=config)
        options = {}
        if args.mode == "lora":  # TRL puts the adapter on, and switches it off for the reference
            options["peft_config"] = lora_config(model, args, "CAUSAL_LM", head="lm_head")
        else:
            options["ref_model"] = copy.deepcopy(model).requires_grad_(False).eval()
            model = make_trainable(model, args, "CAUSAL_LM", head="lm_head")
        trainer = run.trainer(model, pairs, tokenizer, None, callbacks, DPOTrainer,
                              probe_length=training_args.max_length, **options)
        check_whole_weights(trainer)
        _check_room(trainer, len(pairs["train"]))
        trainer.train(resume_from_checkpoint=run.checkpoint)
        metrics = _starting_point(trainer.state.log_history)
        if "validation" in pairs:
            metrics.update(_preference_metrics(trainer.evaluate(), "eval"))
        test = records.get("test")
        if test is not None:
            metrics.update(_preference_metrics(trainer.evaluate(pairs["test"], metric_key_prefix="test"), "test"))

        if trainer.is_world_process_zero():
            with run.final_folder(trainer) as staging:
                saved = save_model(trainer.model, tokenizer, staging)
                responses = []
                if test is not None:  # the greedy responses of the model as saved (LoRA merged)
                    replies = generate_replies(saved, tokenizer, pairs["test"]["prompt"], args.max_new_tokens,
                                               training_args.per_device_train_batch_size)  # evaluation's is 1
                    responses = [{**record, "model_response": reply} for record, reply in zip(test, replies)]
                    (staging / "test_responses.json").write_text(
                        json.dumps(responses, indent=2, ensure_ascii=False) + "\n")
                hyperparameters = {
                    "beta": training_args.beta, "loss": ", ".join(training_args.loss_type),
                    "reference": "the base (adapter switched off)" if args.mode == "lora"
                                 else "a frozen copy of the base",
                    "pairs cut to (tokens)": training_args.max_length,
                    **run.hyperparameters(args.mode)}
                card = write_card(staging, Card(
                    "dpo", saved, run.output_dir.name, data=args.data, base_model=args.model, mode=args.mode,
                    metrics=metrics, hyperparameters=hyperparameters, tags=("trl", "dpo"), details=dict(
                        examples=responses[:3], dataset_sizes={split: len(d) for split, d in records.items()})))
                if args.mode == "lora":
                    write_adapter_card(staging / "adapter", card, args.model)
                write_results(staging / "test_results.json", metrics)
    return run.produced(metrics)


def _check_causal_lm(config, source: str) -> None:
    """A folder of ours may hold a classifier, whose head `ScratchGPTForCausalLM` would replace with a random one."""
    architectures = config.architectures or []
    if config.model_type == "scratch_gpt" and architectures and ScratchGPTForCausalLM.__name__ not in architectures:
        raise ValueError(f"{source} holds a {architectures[0]}, not a causal language model; DPO tunes an "
                         "instruction model (`hf-scratch-gpt instruct` writes one).")


def _check_room(trainer, pairs: int) -> None:
    """TRL leaves out the pairs whose prompt alone fills `max_length` (nothing of their responses would count):
    say how many, and refuse a training split left empty."""
    kept, max_length = len(trainer.train_dataset), trainer.args.max_length
    if kept == 0:
        raise ValueError(f"Every training pair's prompt fills the {max_length} tokens --max_length allows (the model's "
                         "context by default), leaving no room for its responses; shorten the prompts or use a "
                         "model with a longer context.")
    if kept < pairs:
        logger.warning("%d of %d training pairs are left out: their prompt fills the %d tokens --max_length allows.",
                       pairs - kept, pairs, max_length)


def _preference_metrics(evaluation: dict, prefix: str) -> dict:
    """The metrics of one evaluation under our names. TRL adds its own (the rewards) under `eval_` whatever the
    prefix asked, so the test split's rewards come back as `eval_rewards/...` beside `test_loss`."""
    return {f"{prefix}_{ours}": evaluation.get(f"{prefix}_{trl}", evaluation.get(f"eval_{trl}"))
            for trl, ours in PREFERENCE_METRICS.items()}


def _starting_point(log_history: list[dict]) -> dict:
    """The validation loss before the first step (`eval_on_start`), as `base_eval_loss` (absent when not measured)."""
    first = next((entry for entry in log_history if "eval_loss" in entry and entry["step"] == 0), None)
    return {"base_eval_loss": first["eval_loss"]} if first else {}


def _dpo_command(args, training_args) -> None:
    report(dpo(args, training_args), training_args, "the preference-tuned model",
           ("base_eval_loss", "eval_loss", "eval_reward_accuracy", "test_reward_accuracy"))


command = Command(_dpo_command, (PreferenceArguments, DPOTrainingArguments), flag_file=True)
