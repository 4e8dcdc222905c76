"""Output folders that are never left half-written: checked before any work, removed again when a failed run
leaves nothing worth keeping, filled through a hidden staging folder moved into place at the end; single files
written under a temporary name and renamed. Trainer writes a checkpoint's `trainer_state.json` last, so a
checkpoint whose state parses was written whole."""

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

RESUME_LAST = "last"  # --resume_from_checkpoint last: the newest complete checkpoint in the output folder
CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders in `output_dir`, complete or not."""
    if not output_dir.is_dir():
        return []
    return [path for path in output_dir.iterdir() if CHECKPOINT.fullmatch(path.name) and path.is_dir()]


def is_complete(checkpoint: Path) -> bool:
    try:
        return isinstance(json.loads((checkpoint / TRAINER_STATE_NAME).read_text()), dict)
    except (OSError, ValueError):
        return False


def check_output_dir(output_dir: Path) -> None:
    """Refuse an output folder that is a file or cannot be written, before any work is done."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"Output folder {output_dir} is a file; choose another --output_dir.")
    existing = next(path for path in (output_dir.absolute(), *output_dir.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"Output folder {output_dir} cannot be created: {existing} is a file.")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ValueError(f"Output folder {output_dir} cannot be written ({error.strerror} in {existing}); "
                         "choose another --output_dir.") from None


def check_new_folder(output_dir: Path) -> None:
    """Refuse a destination that already holds something (conversions and exports never mix folders)."""
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ValueError(f"Output folder {output_dir} already exists and is not empty; choose another destination.")


@contextmanager
def output_folder(output_dir: Path):
    """Around a whole run: check the folder first, and if the run fails, remove the folder again when
    this run created it and left nothing in it worth keeping (a complete checkpoint or a saved model)."""
    check_output_dir(output_dir)
    created = not output_dir.exists()
    try:
        yield output_dir
    except BaseException:
        if created and output_dir.is_dir() and not any(map(_worth_keeping, output_dir.iterdir())):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _worth_keeping(path: Path) -> bool:
    if path.name.startswith("."):  # a staging folder
        return False
    return is_complete(path) if CHECKPOINT.fullmatch(path.name) else True


@contextmanager
def saving_into(output_dir: Path):
    """Yield a hidden staging folder inside `output_dir` for the final files, then move them in. A run
    killed or failing while saving leaves the folder as it was, its checkpoints intact."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".saving-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        yield staging
        for item in staging.iterdir():
            target = output_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            resume = f" with --resume_from_checkpoint {RESUME_LAST}" if checkpoints(output_dir) else ""
            raise OSError(error.errno, f"No space left on the device while saving to {output_dir}; free some "
                                       f"space and run again{resume}.") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def new_folder(output_dir: Path):
    """A destination that must be new or empty, filled whole or not at all: the staging folder to write into."""
    check_new_folder(output_dir)
    with output_folder(output_dir), saving_into(output_dir) as staging:
        yield staging


def check_new_file(destination: Path) -> None:
    """Refuse a file destination that exists, or whose folder does not."""
    if destination.exists():
        raise ValueError(f"{destination} already exists; choose another destination.")
    if not destination.parent.is_dir():
        raise ValueError(f"Folder {destination.parent} does not exist; create it or choose another destination.")


def write_file(destination: Path, write: Callable[[str], None]) -> None:
    """Write one new file whole or not at all: `write(path)` fills a temporary file beside it, then it is renamed."""
    check_new_file(destination)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
