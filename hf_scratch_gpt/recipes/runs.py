"""A recipe run from start to end (`recipe_run`): the output folder never left half-written, the seed set, a push
checked before training, the checkpoint a run resumes from, the final folder written by process 0 through a
staging folder (with the loss plot and the files that record the run), and an ending where every process waits
for that folder before process 0 pushes it."""

import copy
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import broadcast_object_list
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import IntervalStrategy

from ..artifacts import (
    RESUME_LAST,
    RUN_CONFIG,
    hub_login,
    output_folder,
    plot_losses,
    push_to_hub,
    saving_into,
    training_hyperparameters,
    write_run_config,
    write_training_args,
)
from ..artifacts.folders import CHECKPOINT, checkpoints, is_complete
from .arguments import RecipeTrainingArguments
from .precision import measured_bf16

logger = logging.getLogger(__name__)


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: a checkpoint folder, or `last` for the newest
    complete one in the output folder."""
    requested = training_args.resume_from_checkpoint
    if requested is None:
        return None
    if requested != RESUME_LAST:
        if not is_complete(Path(requested)):
            raise ValueError(f"--resume_from_checkpoint {requested} is not a complete checkpoint (a checkpoint-N "
                             f"folder with its {TRAINER_STATE_NAME}); give one, or '{RESUME_LAST}'.")
        return requested
    output_dir = Path(training_args.output_dir)
    newest_first = sorted(checkpoints(output_dir), key=lambda c: -int(CHECKPOINT.fullmatch(c.name)[1]))
    for checkpoint in newest_first:
        if is_complete(checkpoint):
            return str(checkpoint)
        logger.warning("Passing over %s: it was not written whole (the run stopped while saving it).", checkpoint)
    raise ValueError(f"--resume_from_checkpoint {RESUME_LAST}: {output_dir} holds no complete checkpoint to "
                     "resume from; start the run without the flag.")


@dataclass
class Run:
    """A recipe run in progress: where it writes, the arguments Trainer gets (pushing off: the run pushes
    its finished folder itself), the checkpoint it resumes from, and the arguments that reproduce it."""

    output_dir: Path
    training_args: RecipeTrainingArguments
    trainer_args: RecipeTrainingArguments
    checkpoint: str | None
    command: str
    arguments: tuple
    started: float = field(default_factory=time.perf_counter)
    precision_note: str | None = None  # why the default precision was chosen, when it was timed
    files: tuple[str, ...] = ()  # what final_folder wrote, relative to the output folder

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def trainer(self, model, datasets, tokenizer, data_collator, callbacks=None, trainer_class=Trainer,
                probe_length: int | None = None, **options):
        """The recipe's Trainer, with the run's arguments, on the `train` and `validation` splits of `datasets`;
        without a validation split, nothing is evaluated (and no best checkpoint picked). A default precision
        left to measure is timed first, on batches `probe_length` tokens long (default: the longest of the first
        training examples)."""
        if self.trainer_args.bf16 is None:
            callbacks = [*(callbacks or []), self._choose_precision(model, datasets["train"], probe_length)]
        if datasets.get("validation") is None:
            self.trainer_args.eval_strategy = IntervalStrategy.NO
            self.trainer_args.load_best_model_at_end = False
            self.trainer_args.eval_on_start = False
        return trainer_class(model=model, args=self.trainer_args, train_dataset=datasets["train"],
                             eval_dataset=datasets.get("validation"), processing_class=tokenizer,
                             data_collator=data_collator, callbacks=callbacks, **options)

    def _choose_precision(self, model, train, length: int | None) -> "ChosenPrecision":
        """bf16 autocast or fp32, whichever trains `model` faster here (`precision.measured_bf16`): the main process
        times it (the others then read its cache), and every process takes its answer. A resumed run keeps the
        choice its checkpoint was trained with, wherever it resumes."""
        args = self.trainer_args
        choice = ChosenPrecision.saved_in(self.checkpoint) if self.checkpoint else None
        if choice is None:
            if length is None:
                length = max(len(ids) for ids in train[:64]["input_ids"])
            with args.main_process_first(desc="timing a training step in bf16 and fp32"):
                choice = measured_bf16(model, args.per_device_train_batch_size, length)
            if args.world_size > 1:
                choice = broadcast_object_list([choice])[0]
        bf16, self.precision_note = choice
        for chosen in (self.trainer_args, self.training_args):
            chosen.bf16 = bf16
            chosen.mixed_precision = "bf16" if bf16 else chosen.mixed_precision  # as their __post_init__ sets it
        return ChosenPrecision(bf16, self.precision_note)

    @contextmanager
    def final_folder(self, trainer, tokens_per_step: int | None = None):
        """On process 0 (check `trainer.is_world_process_zero()` first), the staging folder of the final folder,
        with the loss plot (which cards show) already in it; after the recipe's own files, the run's arguments and
        the config file that reproduces it are added and everything is moved into place."""
        with saving_into(self.output_dir) as staging:
            plot_losses(trainer.state.log_history, staging / "loss.png", tokens_per_step)
            yield staging
            write_training_args(staging, self.training_args)
            write_run_config(staging / RUN_CONFIG, self.command, *self.arguments, self.training_args)
            self.files = tuple(sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file()))

    def hyperparameters(self, mode: str | None = None) -> dict:
        """The training settings a model card shows (`mode`: what a fine-tuning trained)."""
        return training_hyperparameters(self.training_args, self.seconds, mode, self.precision_note)

    def produced(self, metrics: dict) -> "Produced":
        return Produced(metrics, self.files)


class ChosenPrecision(TrainerCallback, ExportableState):
    """The precision the run's default chose, and why: Trainer saves it in every checkpoint's trainer_state.json
    (as it saves any `ExportableState` callback's), where a resumed run reads it back, so that the run goes on in
    the precision it started in even on another CPU or after the timings' cache was cleared."""

    def __init__(self, bf16: bool, note: str):
        self.bf16, self.note = bf16, note

    def state(self) -> dict:
        return {"args": {"bf16": self.bf16, "note": self.note}, "attributes": {}}

    @classmethod
    def saved_in(cls, checkpoint: str) -> tuple[bool, str] | None:
        saved = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text()).get("stateful_callbacks", {})
        if cls.__name__ not in saved:  # saved before the choice was kept, or with the precision given
            return None
        return saved[cls.__name__]["args"]["bf16"], saved[cls.__name__]["args"]["note"]


class Produced(dict):
    """What a recipe produced: its metrics (this mapping, as the recipes have always returned them) and the files
    it wrote into its output folder (`files`, relative to it; none on the processes that do not save)."""

    def __init__(self, metrics: dict, files: tuple[str, ...] = ()):
        super().__init__(metrics)
        self.files = files


def write_results(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def report(metrics: dict, training_args, saved: str, shown: tuple[str, ...]) -> None:
    """The line a training command ends with, on the process that saved: what went where, and its key metrics."""
    if training_args.process_index == 0:
        summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in shown)
        print(f"Saved {saved} to {training_args.output_dir}" + (f" ({summary})" if summary else ""))


@contextmanager
def recipe_run(training_args: RecipeTrainingArguments, *arguments, command: str, what: str):
    """Around a whole recipe run: the output folder checked (and removed again if the run fails before leaving
    anything worth keeping), the seed set before any model exists, a push checked before training, the
    checkpoint to resume from found. At the end, every process waits until process 0 has saved the folder
    (so that each returns with it written), then process 0 pushes it when asked. `arguments` are the
    recipe's other argument dataclasses and `command` its CLI name, for the file that reproduces the run; `what`
    names it in the commit."""
    with output_folder(Path(training_args.output_dir)) as output_dir:
        set_seed(training_args.seed)
        trainer_args, repo_id = _prepare_push(training_args)
        yield Run(output_dir, training_args, trainer_args, resume_checkpoint(training_args), command, arguments)
        training_args.distributed_state.wait_for_everyone()
        if repo_id and training_args.process_index == 0:
            url = push_to_hub(output_dir, repo_id, token=training_args.hub_token,
                              private=training_args.hub_private_repo, revision=training_args.hub_revision,
                              commit_message=f"{what} with hf-scratch-gpt")
            print(f"Pushed {output_dir} to {url}")


def _prepare_push(training_args):
    """Check a requested push before training, and give Trainer a copy of the arguments with its own pushing
    off (it would push each checkpoint, then overwrite our card with its own). Returns those arguments and the
    repo id to push the finished folder to (None when not pushing)."""
    if not training_args.push_to_hub:
        return training_args, None
    _, repo_id = hub_login(training_args.hub_model_id or Path(training_args.output_dir).resolve().name,
                           training_args.hub_token)
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub = False
    return trainer_args, repo_id
