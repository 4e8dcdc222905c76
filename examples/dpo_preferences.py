"""Chapter 7's bonus end to end on a CPU: preference tuning (DPO) of an instruction model.

1. The instruction model: built as `examples/instruct_alpaca.py` builds it (a small base pretrained on Python's
   bundled documentation, then fine-tuned on the records' `output` responses), or the folder `--instruction-model`
   names (a `tuned` folder that example wrote).
2. DPO with `recipes.dpo` on the book's 1,100 preference pairs, split as the book does (85% train, 5% validation,
   10% test, file order; the six pairs whose chosen response equals the rejected one are left out): the polite
   response chosen, the impolite one rejected, the book's beta 0.1. As the book does, the whole model trains and a
   frozen copy is the reference (`--mode lora` trains adapters instead, the reference then being the model with
   its adapter switched off; give it `--learning-rate 3e-3`), at 1e-4 for two epochs: a model this small needs a
   higher rate than the book's 5e-6, and after one epoch about 0.8 of the validation pairs prefer the chosen
   response, most of the others having a chosen response much longer than the rejected one, which the summed
   log-probabilities of DPO hold against it.
3. Greedy responses to the test prompts, written to `dpo/test_responses.json`.

    python examples/dpo_preferences.py --data instruction-data-with-preference.json

The last line printed is `val_loss_before=<float> val_loss_after=<float> val_reward_accuracy=<float> wall_s=<float>`:
the validation DPO loss before (ln 2: the model is its own reference) and after, the share of validation pairs whose
chosen response gains more than the rejected one, and the time of the whole run.
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from instruct_alpaca import instruction_model  # noqa: E402

from hf_scratch_gpt.recipes import DPOTrainingArguments, PreferenceArguments, dpo  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Path to instruction-data-with-preference.json")
    parser.add_argument("--output-dir", default="outputs/dpo-preferences")
    parser.add_argument("--instruction-model", help="An instruction model to start from (default: build one)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--mode", default="full", choices=["full", "lora"])
    cli = parser.parse_args()
    output = Path(cli.output_dir)
    sft = cli.instruction_model
    if sft is None:
        instruction_model(cli.data, output / "sft")
        sft = str(output / "sft" / "tuned")

    metrics = dpo(
        PreferenceArguments(model=sft, data=cli.data, mode=cli.mode, drop_identical_pairs=True, max_new_tokens=128),
        DPOTrainingArguments(output_dir=str(output / "dpo"), learning_rate=cli.learning_rate,
                             num_train_epochs=cli.epochs, eval_strategy="steps",
                             eval_steps=20, logging_steps=5, disable_tqdm=True,
                             dataloader_pin_memory=False),
    )
    print(f"test_loss={metrics['test_loss']:.4f} test_reward_accuracy={metrics['test_reward_accuracy']:.4f} "
          f"test_reward_margin={metrics['test_reward_margin']:.4f}")
    print(f"val_loss_before={metrics['base_eval_loss']:.4f} val_loss_after={metrics['eval_loss']:.4f} "
          f"val_reward_accuracy={metrics['eval_reward_accuracy']:.4f} wall_s={time.perf_counter() - START:.1f}")


if __name__ == "__main__":
    main()
