"""Classification fine-tuning (chapter 6, with LoRA from appendix E): labelled texts, a pretrained
base, PEFT or the book's partial unfreezing, and `transformers.Trainer`."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy

from ..convert import from_gpt2
from ..data import build_classification_dataset, load_labelled
from ..hub import plot_losses, write_classification_card
from ..modeling_scratch_gpt import ScratchGPTForSequenceClassification

LORA_TARGETS = ["qkv", "out_proj", "fc_in", "fc_out"]  # every linear layer of every block


@dataclass
class ClassificationArguments:
    """The base model, the labelled data and what is trained."""

    model: str = field(metadata={"help": "A model this package saved, or a GPT-2 folder or Hub id."})
    data: str = field(metadata={"help": "TSV / CSV / JSON(L) / Parquet file, folder or glob, or a Hub dataset."})
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens "
                                                                    "(default: the model's context length)."})
    balance: bool = field(default=False, metadata={"help": "Undersample every class to the smallest one."})
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2],
                                         metadata={"help": "Train, validation and test fractions."})
    split_seed: int = field(default=123, metadata={"help": "Seed of the shuffle before splitting."})
    mode: Literal["lora", "full", "last_block", "last_two_blocks"] = field(
        default="lora", metadata={"help": "What trains: LoRA adapters, everything, or the last block(s)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                                           metadata={"help": "Linear layers that get adapters."})


@dataclass
class ClassificationTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the book's fine-tuning defaults: 5 epochs, AdamW 5e-5, weight decay 0.1,
    evaluation every epoch, the most accurate epoch kept."""

    output_dir: str | None = field(default="scratch-gpt-classifier", metadata={"help": "Where the model goes."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    num_train_epochs: float = field(default=5, metadata={"help": "Epochs over the training split."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the best and the last checkpoint."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "End with the best checkpoint."})
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "What 'best' means."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers."})


def classification_metrics(label_names: list[str]):
    """`compute_metrics` for Trainer: accuracy, and precision / recall / F1 of every class."""

    def compute(prediction) -> dict:
        predicted, actual = _predicted_ids(prediction.predictions), prediction.label_ids
        metrics = {"accuracy": float((predicted == actual).mean())}
        for i, name in enumerate(label_names):
            hits = int(((predicted == i) & (actual == i)).sum())
            precision = hits / max(int((predicted == i).sum()), 1)
            recall = hits / max(int((actual == i).sum()), 1)
            metrics[f"precision_{name}"] = precision
            metrics[f"recall_{name}"] = recall
            metrics[f"f1_{name}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return metrics

    return compute


def _predicted_ids(predictions) -> np.ndarray:
    """Class ids from what Trainer gathered: the logits, first of a tuple when the model returned more."""
    return (predictions[0] if isinstance(predictions, tuple) else predictions).argmax(-1)


def classify(args: ClassificationArguments, training_args: ClassificationTrainingArguments | None = None) -> dict:
    """Fine-tune a classifier; returns the test metrics (`test_accuracy`, ...).

    The output folder holds the merged model (loads with `AutoModelForSequenceClassification` and
    `pipeline("text-classification")`, label names included), the tokenizer, `loss.png`, a
    `README.md` card with the confusion matrix, and for LoRA the PEFT adapter in `adapter/`.
    """
    training_args = training_args or ClassificationTrainingArguments()
    start = time.perf_counter()
    set_seed(training_args.seed)
    if args.mode == "lora" and args.lora_r <= 0:
        raise ValueError(f"lora_r={args.lora_r} is invalid: the LoRA rank must be a positive integer.")
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"Output folder {output_dir} is a file.")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_config = AutoConfig.from_pretrained(args.model)
    context = getattr(base_config, "context_length", None) or base_config.n_positions
    max_length = args.max_length or context
    if max_length > context:
        raise ValueError(f"max_length={max_length} is longer than the model's context length {context}.")
    datasets = build_classification_dataset(
        load_labelled(args.data, args.text_column, args.label_column), tokenizer, max_length,
        tuple(args.split_fractions), args.split_seed, args.balance,
    )
    label_names = datasets["train"].features["labels"].names

    model = _base_classifier(args.model, label_names, tokenizer.pad_token_id)
    model = _make_trainable(model, args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics(label_names),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    test = trainer.predict(datasets["test"], metric_key_prefix="test") if "test" in datasets else None
    metrics = dict(test.metrics) if test else trainer.evaluate()
    if not trainer.is_world_process_zero():
        return metrics

    if args.mode == "lora":
        model.save_pretrained(output_dir / "adapter")
        tokenizer.save_pretrained(output_dir / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "training_args.json").write_text(training_args.to_json_string() + "\n")
    plot_losses(trainer.state.log_history, output_dir / "loss.png")
    confusion = None
    if test is not None:
        confusion = np.zeros((len(label_names), len(label_names)), dtype=int)
        np.add.at(confusion, (test.label_ids, _predicted_ids(test.predictions)), 1)
    write_classification_card(
        output_dir, base_model=args.model, config=model.config, data=args.data, mode=args.mode,
        dataset_sizes={split: len(d) for split, d in datasets.items()}, label_names=label_names,
        training_args=training_args, metrics=metrics, confusion=confusion, wall_seconds=time.perf_counter() - start,
    )
    (output_dir / "test_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _base_classifier(source: str, label_names: list[str], pad_token_id: int) -> ScratchGPTForSequenceClassification:
    """A classifier whose body comes from `source` (ours or GPT-2's) and whose `score` head is new."""
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "pad_token_id": pad_token_id,
    }
    model_type = AutoConfig.from_pretrained(source).model_type
    if model_type == "gpt2":
        body = from_gpt2(source)
        body.config.update(labels)
        model = ScratchGPTForSequenceClassification(body.config)
        model.model.load_state_dict(body.model.state_dict())
        return model
    if model_type != "scratch_gpt":
        raise ValueError(f"{source} holds a {model_type!r} model; give a model this package saved, or a GPT-2 one.")
    return ScratchGPTForSequenceClassification.from_pretrained(source, **labels)


def _make_trainable(model, args: ClassificationArguments):
    """LoRA adapters (PEFT; the head trains in full), everything, or the book's last block(s) + final norm + head."""
    if args.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_r, lora_alpha=args.lora_alpha,
                            lora_dropout=args.lora_dropout, target_modules=list(args.lora_target_modules),
                            modules_to_save=["score"])
        return get_peft_model(model, config)
    if args.mode != "full":
        blocks = 1 if args.mode == "last_block" else 2
        model.requires_grad_(False)
        for module in (*model.model.trf_blocks[-blocks:], model.model.final_norm, model.score):
            module.requires_grad_(True)
    return model
