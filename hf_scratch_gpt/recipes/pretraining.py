"""Pretraining (chapter 5): a corpus, a tokenizer, a new or saved model, and `transformers.Trainer`."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainerCallback, default_data_collator
from transformers.trainer_utils import IntervalStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from ..artifacts import Card, write_card
from ..command import Command
from ..configuration_scratch_gpt import ScratchGPTConfig
from ..corpus import PYTHON_DOCS, TOKEN_DTYPES, StreamedWindows, build_lm_dataset, load_corpus, stream_lm_dataset
from ..generation import room_left
from ..loading import load_config, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from ..tokenization import train_tokenizer
from .arguments import RecipeTrainingArguments
from .runs import Produced, recipe_run, report, write_results
from .trainer import LanguageModelTrainer

SMALL_MODEL = dict(context_length=128, emb_dim=128, n_heads=4, n_layers=4)  # pretrains in a few CPU minutes


@dataclass
class ModelArguments:
    """The model to train: a saved one, or a new one of this shape. The shape fields are `ScratchGPTConfig`'s
    (less those the tokenizer sets and `use_cache` / `classifier_bias`, which pretraining does not use), with its
    defaults but for `SMALL_MODEL`'s, and checked by it; tests/recipes/test_pretrain.py keeps the two in step."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from this saved model."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Use this tokenizer (default: the model's, or one trained on the corpus)."}
    )
    tokenizer_kind: Literal["bpe", "char"] = field(default="bpe", metadata={"help": "Kind of tokenizer to train."})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": "Vocabulary size of the trained tokenizer."})
    context_length: int = field(default=128, metadata={
        "help": "Longest sequence the position embedding covers (`max_position_embeddings`)."})
    emb_dim: int = field(default=128, metadata={"help": "Width of every hidden state (`hidden_size`)."})
    n_heads: int = field(default=4, metadata={
        "help": "Attention heads per block; must divide emb_dim (`num_attention_heads`)."})
    n_layers: int = field(default=4, metadata={"help": "Number of transformer blocks (`num_hidden_layers`)."})
    activation_function: str = field(default="gelu_pytorch_tanh", metadata={
        "help": "The feed-forward non-linearity, by its transformers name: the book's and GPT-2's tanh GELU, or "
                "`gelu` (exact; nanoGPT's choice, faster on CPUs)."})
    drop_rate: float = field(default=0.1, metadata={
        "help": "Dropout on embeddings, attention weights and both residual branches."})
    qkv_bias: bool = field(default=False, metadata={
        "help": "Whether the query/key/value projection has a bias (GPT-2: yes; the book's model: no)."})
    bias: bool = field(default=True, metadata={
        "help": "Whether the other linear layers and the LayerNorms have biases (GPT-2 and the book: yes)."})
    layer_norm_epsilon: float = field(default=1e-5, metadata={"help": "Epsilon of every LayerNorm."})
    initializer_range: float = field(default=0.02, metadata={
        "help": "Standard deviation of the normal initialisation (GPT-2's scheme)."})
    initialization: str = field(default="gpt2", metadata={
        "help": "How the weights start: gpt2 (normal, the residual projections scaled down) or book (PyTorch's "
                "module defaults, as the book's GPTModel keeps them)."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Share the token embedding with the head."})

    def __post_init__(self):
        self.config_fields()  # the config's own checks, before anything starts

    def config_fields(self) -> dict:
        """The shape of a new model, checked by `ScratchGPTConfig` itself."""
        shape = {name: getattr(self, name) for name in SHAPE_FIELDS}
        ScratchGPTConfig(**shape)
        return shape


SHAPE_FIELDS = ("context_length", "emb_dim", "n_heads", "n_layers", "activation_function", "drop_rate", "qkv_bias",
                "bias", "layer_norm_epsilon", "initializer_range", "initialization", "tie_word_embeddings")


@dataclass
class DataArguments:
    """The corpus and how it is cut into training windows."""

    _argument_group_name = "data"

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
    num_proc: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (default: every core for a large corpus)."})
    token_dtype: Literal[TOKEN_DTYPES] | None = field(
        default=None, metadata={"help": "Integer type of stored tokens (default: the smallest that holds them)."})
    streaming: bool = field(default=False, metadata={
        "help": "Stream the corpus and cut windows on the fly (for corpora larger than the disk, or from the Hub)."})
    validation_documents: int = field(
        default=100, metadata={"help": "With --streaming: held-out documents (the first of the stream)."})

    def __post_init__(self):
        if self.streaming and self.shuffle_seed is not None:
            raise ValueError("--shuffle_seed does not apply to --streaming: a stream is read in its order (shuffle "
                             "its files beforehand, or prepare the corpus without --streaming).")
        if self.validation_documents < 0:
            raise ValueError(f"--validation_documents={self.validation_documents} is invalid: it must be >= 0.")


@dataclass
class PretrainingArguments(RecipeTrainingArguments):
    """Defaults that train the small default model in a few CPU minutes: steps rather than epochs, cosine
    decay after a short warmup, fused AdamW, an evaluation and a checkpoint every 100 steps, the best kept."""

    output_dir: str | None = field(default="scratch-gpt", metadata={"help": "Where the model and checkpoints go."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the windows' `start` column: their tokens are read from it."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device."})
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Decay after warmup."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (a fraction if < 1)."})
    optim: OptimizerNames | str = field(default="adamw_torch_fused", metadata={"help": "Optimizer (fused AdamW)."})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2."})
    eval_strategy: IntervalStrategy | str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_strategy: IntervalStrategy | str = field(default="steps", metadata={"help": "When to save a checkpoint."})
    save_steps: float = field(default=100, metadata={"help": "Save every N steps."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "End with the best checkpoint."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={"help": "What 'best' means."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every N steps."})


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
        room = room_left(model, ids.shape[1])
        if room <= 0:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model.generate(ids, max_new_tokens=min(self.max_new_tokens, room), do_sample=False)
        model.train(was_training)
        if state.is_world_process_zero:
            print(f"\n[step {state.global_step}] {processing_class.decode(output[0], skip_special_tokens=True)!r}")


class StreamStateCallback(TrainerCallback):
    """Save, with each checkpoint, where each process's stream of windows is (`StreamedWindows.state_dict`), so
    that a resumed run goes on from there instead of reading the stream again from its start."""

    def __init__(self, windows: StreamedWindows):
        self.windows = windows

    def on_save(self, args, state, control, **kwargs):
        consumed = state.global_step * args.gradient_accumulation_steps * args.per_device_train_batch_size
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (checkpoint / stream_state_name(args.process_index)).write_text(json.dumps(self.windows.state_dict(consumed)))


def stream_state_name(process_index: int) -> str:
    return f"stream_state-{process_index}.json"


def pretrain(
    model_args: ModelArguments | None = None,
    data_args: DataArguments | None = None,
    training_args: PretrainingArguments | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> Produced:
    """Pretrain a ScratchGPT on a corpus; returns the final evaluation metrics and, as `.files`, what it wrote.

    The output folder ends up holding the model (safetensors, config, code files, generation
    config), the tokenizer, `loss.png`, `run.yaml` and a `README.md` model card; checkpoints go beside them.
    Everything that can be checked is checked before anything is written. `--resume_from_checkpoint
    last` (or a checkpoint folder) continues an interrupted run exactly, a streamed corpus where each
    process's stream left off; `callbacks` join Trainer's.
    """
    model_args = model_args or ModelArguments()
    data_args = data_args or DataArguments()
    training_args = training_args or PretrainingArguments()
    with recipe_run(training_args, model_args, data_args, command="pretrain", what="Pretrained model") as run:
        # A resumed run continues the model and tokenizer its checkpoint holds.
        model_source = model_args.model_name_or_path or run.checkpoint
        config = load_config(model_source) if model_source else None  # before its tokenizer is looked at
        tokenizer_source = model_args.tokenizer_name_or_path or model_source
        if data_args.streaming:
            _check_streaming(training_args, tokenizer_source)
        # Given a tokenizer, a corpus of files is tokenized where it lies (`tokenize_corpus`), not loaded first.
        tokenized_in_place = tokenizer_source and not data_args.streaming
        corpus = data_args.data if tokenized_in_place else load_corpus(
            data_args.data, data_args.text_column, data_args.streaming)
        if tokenizer_source:
            tokenizer = load_tokenizer(tokenizer_source, config=config if tokenizer_source == model_source else None)
        else:
            texts = (text for batch in corpus.iter(batch_size=1000) for text in batch["text"])  # never all at once
            tokenizer = train_tokenizer(texts, kind=model_args.tokenizer_kind,
                                        vocab_size=model_args.tokenizer_vocab_size)
        if model_source:
            model = load_model(model_source, ScratchGPTForCausalLM, tokenizer, config=config)
        else:
            model = ScratchGPTForCausalLM(ScratchGPTConfig(
                vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id, **model_args.config_fields()))
        config = model.config
        max_length = config.context_length if data_args.max_length is None else data_args.max_length  # 0 refused
        if max_length > config.context_length:
            raise ValueError(
                f"max_length={max_length} is longer than the model's context_length={config.context_length}."
            )
        _check_no_other_model(run.output_dir, config)
        callbacks = [SampleCallback(data_args.sample_prompt), *(callbacks or [])]
        trainer_options = {}
        if data_args.streaming:
            train, validation = stream_lm_dataset(
                corpus, tokenizer, max_length, data_args.stride, data_args.validation_documents,
                training_args.process_index, training_args.world_size, data_args.token_dtype)
            datasets = {"train": train, **({"validation": validation} if validation is not None else {})}
            if run.checkpoint:
                train.load_state_dict(_stream_state(run.checkpoint, training_args))
                run.trainer_args.ignore_data_skip = True  # the stream goes on where it was, nothing to pass over
                trainer_options["stream_checkpoint"] = run.checkpoint
            callbacks.append(StreamStateCallback(train))
        else:
            with training_args.main_process_first(desc="tokenizing and windowing"):  # others read datasets' cache
                datasets = build_lm_dataset(
                    corpus, tokenizer, max_length, data_args.stride, data_args.validation_fraction,
                    data_args.shuffle_seed, data_args.num_proc, data_args.token_dtype, data_args.text_column,
                )
        tokenizer.model_max_length = config.context_length

        trainer = run.trainer(model, datasets, tokenizer, default_data_collator, callbacks, LanguageModelTrainer,
                              probe_length=max_length,
                              **trainer_options)
        _check_the_model_can_be_gathered(trainer)
        trainer.train(resume_from_checkpoint=run.checkpoint)
        metrics = trainer.final_evaluation() if "validation" in datasets else {}
        # FSDP and DeepSpeed ZeRO-3 shard the weights: every process takes part in gathering them, process 0 writes.
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        tokens_per_step = max_length * training_args.per_device_train_batch_size * training_args.world_size
        tokens_per_step *= training_args.gradient_accumulation_steps

        if trainer.is_world_process_zero():
            with run.final_folder(trainer, tokens_per_step) as staging:
                trainer.model.save_pretrained(staging, state_dict=state_dict)
                tokenizer.save_pretrained(staging)
                sizes = {split: len(d) for split, d in datasets.items() if split != "train" or not data_args.streaming}
                hyperparameters = {"steps": training_args.max_steps,
                                   "tokens seen": f"{trainer.state.global_step * tokens_per_step:,}",
                                   **run.hyperparameters()}
                write_card(staging, Card(
                    "pretrain", model, run.output_dir.name, data=data_args.data, metrics=metrics,
                    hyperparameters=hyperparameters, details=dict(
                        dataset_sizes=sizes, max_length=max_length, stride=data_args.stride or max_length,
                        streamed=data_args.streaming)))
                write_results(staging / "eval_results.json", metrics)
    return run.produced(metrics)


def _check_streaming(training_args, tokenizer_source) -> None:
    """What a streamed corpus needs, refused before anything is read."""
    if training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs in.")
    if training_args.dataloader_num_workers:
        raise ValueError("--streaming reads the stream in the training process, where its position is saved with "
                         "each checkpoint: leave --dataloader_num_workers at 0.")
    if not tokenizer_source:
        raise ValueError("--streaming needs a tokenizer (--tokenizer_name_or_path, or --model_name_or_path): "
                         "training one would read the whole stream first.")


def _stream_state(checkpoint: str, training_args) -> dict:
    """Where this process's stream was when `checkpoint` was saved."""
    path = Path(checkpoint) / stream_state_name(training_args.process_index)
    if not path.is_file():
        raise ValueError(f"{checkpoint} holds no {path.name}: it was not saved by a --streaming run on "
                         f"{training_args.world_size} process(es); resume it as it was run.")
    return json.loads(path.read_text())


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


def _pretrain_command(model_args, data_args, training_args) -> None:
    report(pretrain(model_args, data_args, training_args), training_args, "the model", ("eval_loss", "eval_perplexity"))


command = Command(_pretrain_command, (ModelArguments, DataArguments, PretrainingArguments), flag_file=True)
