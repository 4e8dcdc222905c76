"""Trainer code the recipes share: the language-model Trainer (perplexity and data-wait share in its logs, streamed
windows read by each process, the final model's evaluation), and an evaluation before the first step."""

import math
import time

from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..corpus import StreamedWindows


class DataWaitCallback(TrainerCallback):
    """Times the share of training spent between steps, which is where the next batch is drawn (windows sliced
    from the token stream, or streamed and tokenized); `LanguageModelTrainer` logs it as `data_wait_share`."""

    def __init__(self):
        self.step_ended = self.waited = self.total = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step_ended, self.waited, self.total = time.perf_counter(), 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began = time.perf_counter()
        self.waited += self.step_began - self.step_ended

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.total += now - self.step_ended
        self.step_ended = now

    def take_share(self) -> float | None:
        """The share since the last call."""
        share = self.waited / self.total if self.total else None
        self.waited = self.total = 0.0
        return share

    def on_evaluate(self, args, state, control, **kwargs):
        self.step_ended = time.perf_counter()  # evaluating and saving are not waiting for data

    on_save = on_evaluate


class LanguageModelTrainer(Trainer):
    """Trainer that also logs perplexity, exp(loss), next to every evaluation loss, and the data-wait share next
    to every training loss, and that lets each process read its own streamed windows."""

    def __init__(self, *args, stream_checkpoint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_wait = DataWaitCallback()
        self.add_callback(self.data_wait)
        self.stream_checkpoint = stream_checkpoint

    def get_batch_samples(self, *args, **kwargs):
        """A resumed stream goes on where it was (`ignore_data_skip`), and Trainer restores the random state
        (dropout) only after batches it skips: restore it where Trainer would have, after the first batches."""
        batches = super().get_batch_samples(*args, **kwargs)
        if self.stream_checkpoint is not None:
            self._load_rng_state(self.stream_checkpoint)
            self.stream_checkpoint = None
        return batches

    def log(self, logs, *args, **kwargs):
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        if "loss" in logs and (share := self.data_wait.take_share()) is not None:
            logs["data_wait_share"] = round(share, 5)
        super().log(logs, *args, **kwargs)

    def final_evaluation(self) -> dict:
        """The evaluation metrics of the model that training ended with: those already logged for its weights (the
        last step's, or the best checkpoint's, which `load_best_model_at_end` loads), else a new evaluation.
        Evaluating the same weights again would cost a pass over the validation split (2% of tiny Shakespeare's
        run) for the same numbers."""
        state = self.state
        best = self.args.load_best_model_at_end and state.best_model_checkpoint is not None
        step = state.best_global_step if best else state.global_step
        logged = [entry for entry in state.log_history if entry.get("step") == step and "eval_loss" in entry]
        if not logged:
            return self.evaluate()
        return {key: value for key, value in logged[-1].items() if key != "step"}

    def get_train_dataloader(self):
        """Streamed windows are already split among the processes (`split_dataset_by_node`): accelerate's own
        sharding (or dispatching from process 0) would split them again, so they get a plain DataLoader."""
        if not isinstance(self.train_dataset, StreamedWindows):
            return super().get_train_dataloader()
        return DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                          pin_memory=self.args.dataloader_pin_memory)


class ScoreBeforeTraining(TrainerCallback):
    """Evaluate `dataset` before the first training step, when Trainer has prepared the model for DDP or
    DeepSpeed (`Trainer.evaluate` before `train` leaves it unwrapped under DDP, and fails under ZeRO-2).
    The metrics go to the log history, where a resumed run finds them in its checkpoint."""

    def __init__(self, trainer, dataset, metric_key_prefix: str):
        self.trainer, self.dataset, self.metric_key_prefix = trainer, dataset, metric_key_prefix

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.trainer.evaluate(self.dataset, metric_key_prefix=self.metric_key_prefix)
