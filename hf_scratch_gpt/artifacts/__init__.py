"""Everything the package writes to disk: output folders filled whole or not at all (`folders`), trained model
folders (`models`), model cards (`cards`), the loss plot (`plots`), the files that record a run (`run_config`)
and the push of a finished folder to the Hub (`hub`). Conversions, exports and recipes write only through here;
nothing here imports them."""

from .cards import REPO_PLACEHOLDER, Card, training_hyperparameters, write_adapter_card, write_card
from .folders import RESUME_LAST, new_folder, output_folder, saving_into, write_file
from .hub import hub_login, push_to_hub
from .models import is_peft, save_model
from .plots import plot_losses
from .run_config import RUN_CONFIG, FlagFileError, flags_from_file, write_run_config, write_training_args

__all__ = [
    "REPO_PLACEHOLDER",
    "RESUME_LAST",
    "RUN_CONFIG",
    "Card",
    "FlagFileError",
    "flags_from_file",
    "hub_login",
    "is_peft",
    "new_folder",
    "output_folder",
    "plot_losses",
    "push_to_hub",
    "save_model",
    "saving_into",
    "training_hyperparameters",
    "write_adapter_card",
    "write_card",
    "write_file",
    "write_run_config",
    "write_training_args",
]
