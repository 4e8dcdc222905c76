"""Chapter 6's spam classifier on CPU, from a model this package pretrains in the same script.

DRAFT
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from hf_scratch_gpt.recipes import (  # noqa: E402
    ClassificationArguments,
    ClassificationTrainingArguments,
    DataArguments,
    ModelArguments,
    PretrainingArguments,
    classify,
    pretrain,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Path to sms-spam.tsv (header Label<TAB>SMS)")
    parser.add_argument("--output-dir", default="outputs/sms-spam")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--pt-lr", type=float, default=1e-3)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--emb", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ft-batch", type=int, default=8)
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--ft-wd", type=float, default=0.1)
    cli = parser.parse_args()
    out = Path(cli.output_dir)

    pt_metrics = pretrain(
        ModelArguments(tokenizer_kind="bpe", tokenizer_vocab_size=cli.vocab, context_length=cli.ctx,
                       emb_dim=cli.emb, n_heads=cli.heads, n_layers=cli.layers, drop_rate=cli.drop),
        DataArguments(data=cli.data, text_column="SMS", validation_fraction=0.05, shuffle_seed=0,
                      sample_prompt="Free entry"),
        PretrainingArguments(
            output_dir=str(out / "pretrained"),
            max_steps=cli.pretrain_steps,
            per_device_train_batch_size=cli.batch,
            per_device_eval_batch_size=64,
            learning_rate=cli.pt_lr,
            warmup_steps=0.05,
            eval_steps=cli.pretrain_steps,
            save_steps=cli.pretrain_steps,
            logging_steps=100,
            seed=cli.seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        ),
    )
    print(f"pretrain_val_loss={pt_metrics['eval_loss']:.4f} t={time.perf_counter() - START:.1f}", flush=True)
    metrics = classify(
        ClassificationArguments(model=str(out / "pretrained"), data=cli.data, text_column="SMS", label_column="Label",
                                balance=True, split_fractions=[0.7, 0.1, 0.2], split_seed=123, mode=cli.mode),
        ClassificationTrainingArguments(
            output_dir=str(out / "classifier"),
            num_train_epochs=cli.epochs,
            per_device_train_batch_size=cli.ft_batch,
            per_device_eval_batch_size=64,
            learning_rate=cli.lr,
            weight_decay=cli.ft_wd,
            warmup_steps=0.1,
            seed=cli.seed,
            logging_steps=50,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        ),
    )
    print(metrics)
    print(f"test_accuracy={metrics['test_accuracy']:.4f} wall_s={time.perf_counter() - START:.1f}")


if __name__ == "__main__":
    main()
