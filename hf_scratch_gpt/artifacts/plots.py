"""The loss plot every run leaves (`loss.png`), which the model cards show."""

from pathlib import Path


def plot_losses(log_history: list[dict], path: Path, tokens_per_step: int | None = None) -> None:
    """Training and validation loss against steps, with tokens seen on a second axis when known (as the
    book plots pretraining); beside them, for preference tuning, the reward margin and accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = any("rewards/margins" in e or "eval_rewards/margins" in e for e in log_history)
    figure, axes = plt.subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 6, 4), squeeze=False)
    axis = axes[0, 0]
    _plot_series(axis, log_history, {"loss": "Training loss", "eval_loss": "Validation loss"}, "Loss")
    if tokens_per_step:
        to_tokens = (lambda s: s * tokens_per_step, lambda t: t / tokens_per_step)
        tokens_axis = axis.secondary_xaxis("top", functions=to_tokens)
        tokens_axis.set_xlabel("Tokens seen")
    if rewards:
        _plot_series(axes[0, 1], log_history, {"rewards/margins": "Training reward margin",
                                               "eval_rewards/margins": "Validation reward margin",
                                               "eval_rewards/accuracies": "Validation reward accuracy"}, "Reward")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_series(axis, log_history: list[dict], series: dict, ylabel: str) -> None:
    """One line per logged value in `series` (key: label) against steps: training solid, validation dash-dotted.
    A test evaluation is left out (TRL logs its rewards under `eval_` names)."""
    for key, label in series.items():
        points = [(e["step"], e[key]) for e in log_history if key in e and "test_loss" not in e]
        if points:
            axis.plot(*zip(*points), "-." if key.startswith("eval_") else "-", label=label,
                      marker="o" if len(points) < 3 else None)
    axis.set_xlabel("Steps")
    axis.set_ylabel(ylabel)
    axis.legend(loc="upper right")
