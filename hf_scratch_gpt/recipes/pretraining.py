"""Pretraining (chapter 5): a corpus, a tokenizer, a new or saved model, and `transformers.Trainer`."""

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from transformers import Trainer, TrainerCallback, default_data_collator, set_seed
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ..configuration_scratch_gpt import ScratchGPTConfig
from ..data import PYTHON_DOCS, build_lm_dataset, load_corpus
from ..hub import finish_run, plot_losses, prepare_push, write_pretraining_card
from ..loading import load_config, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from ..tokenization import train_tokenizer
from .runs import (
    RecipeTrainingArguments,
    check_training_args,
    output_folder,
    resume_checkpoint,
    saving_into,
    write_training_args,
)


@dataclass
class ModelArguments:
    """The model to train: a new one of this shape, or a saved one to continue from."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from this saved model."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Use this tokenizer (default: the model's, or one trained on the corpus)."}
    )
    tokenizer_kind: Literal["bpe", "char"] = field(default="bpe", metadata={"help": "Kind of tokenizer to train."})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": "Vocabulary size of the trained tokenizer."})
    context_length: int = field(default=128, metadata={"help": "Longest sequence the model handles."})
    emb_dim: int = field(default=128, metadata={"help": "Hidden size."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads per block."})
    n_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    activation_function: str = field(
        default="gelu_pytorch_tanh",
        metadata={"help": "Feed-forward activation: the book's tanh GELU, 'gelu' (exact, nanoGPT's), any transformers name."},
    )
    drop_rate: float = field(default=0.1, metadata={"help": "Dropout rate."})
    qkv_bias: bool = field(default=False, metadata={"help": "Give the query/key/value projection a bias."})
    bias: bool = field(default=True, metadata={"help": "Biases in the other linear layers and LayerNorms."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Share the token embedding with the output head."})


@dataclass
class DataArguments:
    """The corpus and how it is cut into training windows."""

    data: str = field(
        default=PYTHON_DOCS,
        metadata={"help": "'python-docs' (offline default), a text file, folder or glob, or a Hub dataset."},
    )
    text_column: str = field(default="text", metadata={"help": "Text column of json/csv/parquet/Hub data."})
    max_length: int | None = field(default=None, metadata={"help": "Window length (default: context_length)."})
    stride: int | None = field(default=None, metadata={"help": "Distance between windows (default: max_length)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of tokens held out (the end)."})
    shuffle_seed: int | None = field(
        default=None, metadata={"help": "Shuffle documents with this seed before splitting (default: keep order)."}
    )
    sample_prompt: str = field(
        default="Every effort moves you", metadata={"help": "Prompt of the sample printed at each evaluation."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


@dataclass
class PretrainingArguments(RecipeTrainingArguments):
    """`TrainingArguments` with defaults that train the small default model in a few CPU minutes."""

    output_dir: str | None = field(default="scratch-gpt", metadata={"help": "Where the model and checkpoints go."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device."})
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Decay after warmup."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (a fraction if < 1)."})
    optim: OptimizerNames | str = field(default="adamw_torch_fused", metadata={"help": "Optimizer (fused AdamW)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save a checkpoint."})
    save_steps: float = field(default=100, metadata={"help": "Save every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the best and the last checkpoint."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "End with the best checkpoint."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={"help": "What 'best' means."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every N steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers."})


class SampleCallback(TrainerCallback):
    """Print a greedy continuation of a fixed prompt after each evaluation (the book's
    `generate_and_print_sample`): the quickest way to see what the model has learned. Every process
    generates (under FSDP and DeepSpeed ZeRO-3 a forward pass needs them all); process 0 prints."""

    def __init__(self, prompt: str, max_new_tokens: int = 40):
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if model is None or processing_class is None:
            return
        ids = processing_class(self.prompt, return_tensors="pt").input_ids.to(model.device)
        room = model.config.context_length - ids.shape[1]
        if room <= 0:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model.generate(ids, max_new_tokens=min(self.max_new_tokens, room), do_sample=False)
        model.train(was_training)
        if state.is_world_process_zero:
            print(f"\n[step {state.global_step}] {processing_class.decode(output[0], skip_special_tokens=True)!r}")


class LanguageModelTrainer(Trainer):
    """Trainer that also logs perplexity, exp(loss), next to every evaluation loss."""

    def log(self, logs, *args, **kwargs):
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, *args, **kwargs)


def pretrain(
    model_args: ModelArguments | None = None,
    data_args: DataArguments | None = None,
    training_args: PretrainingArguments | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> dict:
    """Pretrain a ScratchGPT on a corpus; returns the final evaluation metrics.

    The output folder ends up holding the model (safetensors, config, code files, generation
    config), the tokenizer, `loss.png` and a `README.md` model card; checkpoints go beside them.
    Everything that can be checked is checked before anything is written. `--resume_from_checkpoint
    last` (or a checkpoint folder) continues an interrupted run exactly; `callbacks` join Trainer's.
    """
    model_args = model_args or ModelArguments()
    data_args = data_args or DataArguments()
    training_args = training_args or PretrainingArguments()
    check_training_args(training_args)
    with output_folder(Path(training_args.output_dir)) as output_dir:
        return _pretrain(model_args, data_args, training_args, output_dir, callbacks)


def _pretrain(model_args, data_args, training_args, output_dir: Path, callbacks) -> dict:
    start = time.perf_counter()
    set_seed(training_args.seed)  # before the model exists: its initialisation is part of the run
    trainer_args, repo_id = prepare_push(training_args)
    checkpoint = resume_checkpoint(training_args)
    # A resumed run continues the model and tokenizer its checkpoint holds.
    model_source = model_args.model_name_or_path or checkpoint
    if model_source:
        load_config(model_source)  # a model of ours or GPT-2's, before its tokenizer is looked at

    corpus = load_corpus(data_args.data, data_args.text_column)
    tokenizer_source = model_args.tokenizer_name_or_path or model_source
    if tokenizer_source:
        tokenizer = load_tokenizer(tokenizer_source)
    else:
        tokenizer = train_tokenizer(corpus["text"], kind=model_args.tokenizer_kind,
                                    vocab_size=model_args.tokenizer_vocab_size)
    if model_source:
        model = load_model(model_source, ScratchGPTForCausalLM, tokenizer)
    else:
        model = ScratchGPTForCausalLM(_new_config(model_args, tokenizer))
    config = model.config
    max_length = config.context_length if data_args.max_length is None else data_args.max_length  # 0 is refused
    if max_length > config.context_length:
        raise ValueError(
            f"max_length={max_length} is longer than the model's context_length={config.context_length}."
        )
    _check_no_other_model(output_dir, config)
    with training_args.main_process_first(desc="tokenizing and windowing"):  # other ranks read datasets' cache
        datasets = build_lm_dataset(
            corpus, tokenizer, max_length, data_args.stride, data_args.validation_fraction, data_args.shuffle_seed,
            data_args.num_proc,
        )
    tokenizer.model_max_length = config.context_length

    trainer = LanguageModelTrainer(
        model=model,
        args=trainer_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[SampleCallback(data_args.sample_prompt), *(callbacks or [])],
    )
    _check_the_model_can_be_gathered(trainer)
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate() if "validation" in datasets else {}
    # FSDP and DeepSpeed ZeRO-3 shard the weights: every process takes part in gathering them, process 0 writes.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        tokens_per_step = max_length * training_args.per_device_train_batch_size * training_args.world_size
        tokens_per_step *= training_args.gradient_accumulation_steps
        with saving_into(output_dir) as staging:
            trainer.model.save_pretrained(staging, state_dict=state_dict)
            tokenizer.save_pretrained(staging)
            write_training_args(staging, training_args)
            plot_losses(trainer.state.log_history, staging / "loss.png", tokens_per_step)
            write_pretraining_card(
                staging,
                model_name=output_dir.name,
                model=model,
                data=data_args.data,
                dataset_sizes={split: len(d) for split, d in datasets.items()},
                max_length=max_length,
                stride=data_args.stride or max_length,
                training_args=training_args,
                metrics=metrics,
                tokens_seen=trainer.state.global_step * tokens_per_step,
                wall_seconds=time.perf_counter() - start,
            )
            (staging / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    finish_run(output_dir, repo_id, training_args, "Pretrained model")
    return metrics


def _check_the_model_can_be_gathered(trainer) -> None:
    """DeepSpeed ZeRO-3 keeps a shard of every weight on each process and gathers the whole model for saving
    only when its config says so: refuse before training, not when the model is to be saved."""
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return
    if not plugin.hf_ds_config.config.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save"):
        raise ValueError("DeepSpeed ZeRO-3 gives the trained model whole only with "
                         "`stage3_gather_16bit_weights_on_model_save: true` in its zero_optimization config "
                         "(`zero3_save_16bit_model: true` in accelerate's): set it, or the run would end unsaved.")


def _new_config(model_args: ModelArguments, tokenizer) -> ScratchGPTConfig:
    shape = {f.name: getattr(model_args, f.name) for f in fields(ModelArguments)
             if f.name in ScratchGPTConfig.__dataclass_fields__}
    return ScratchGPTConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


def _check_no_other_model(output_dir: Path, config: ScratchGPTConfig) -> None:
    """Refuse to mix this run's checkpoints and model with those of a model of another shape."""
    saved = output_dir / "config.json"
    if not saved.is_file():
        return
    try:
        existing = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        existing = {}
    shape = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
    if existing.get("model_type") != config.model_type or any(existing.get(k) != getattr(config, k) for k in shape):
        raise ValueError(
            f"Output folder {output_dir} already holds a different model ({existing.get('model_type')!r}, "
            f"{ {k: existing.get(k) for k in shape} }); choose another --output_dir."
        )
