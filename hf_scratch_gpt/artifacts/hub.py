"""Pushing a finished folder to the Hub: the login checked before training, one commit, checkpoints left behind,
the cards' placeholder replaced by the repo id."""

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from ..command import Command
from .cards import REPO_PLACEHOLDER

# What stays behind when a folder is pushed: checkpoints (Trainer's optimizer and RNG pickles) and hidden files.
PUSH_IGNORE = ["checkpoint-*", ".*", "*/.*", "training_args.bin"]


def hub_login(repo_id: str, token: str | None = None) -> tuple[HfApi, str]:
    """Check that a push to `repo_id` can start (offline mode off, a token the Hub accepts, a valid id)
    and return the API client and the full repo id (a bare name goes under the token's user).
    Recipes call this before training, so a missing token costs seconds, not the run."""
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it to push to the Hub.")
    token = token or get_token()
    if not token:
        raise ValueError("No Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --hub_token.")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except Exception as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            raise ValueError(f"The Hub at {api.endpoint} rejected the token; log in again (`hf auth login`) "
                             "or set a valid HF_TOKEN.") from error
        raise ValueError(f"Cannot reach the Hub at {api.endpoint} ({_summary(error)}); check the network or "
                         "HF_ENDPOINT.") from error
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({error}).") from error
    return api, repo_id


def push_to_hub(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload a finished output folder to a model repo in a single commit and return the commit's URL.

    Checkpoints and hidden files stay behind; the cards' placeholder becomes the repo id, so their
    loading snippets run as written. A repo this call created is deleted again if the upload fails.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ValueError(f"{folder} holds no config.json or adapter_config.json; push a folder this package "
                         "(or save_pretrained) wrote.")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    paths = list(filter_repo_objects(paths, ignore_patterns=PUSH_IGNORE))
    api, repo_id = hub_login(repo_id, token)
    operations = [CommitOperationAdd(path, _with_repo_id(folder / path, repo_id)) for path in paths]
    created = not api.repo_exists(repo_id)
    api.create_repo(repo_id, private=private, exist_ok=True)
    committed = False
    try:
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations, revision=revision,
                                   commit_message=commit_message
                                   or f"Upload {folder.resolve().name} with hf-scratch-gpt")
        committed = True
    except Exception as error:
        raise ValueError(f"Uploading {folder} to {repo_id} failed, nothing was committed"
                         f"{' and the new repo was deleted' if created else ''}: {_summary(error)}") from error
    finally:
        if created and not committed:
            api.delete_repo(repo_id, missing_ok=True)
    return commit.commit_url


def _summary(error: Exception) -> str:
    """An error of huggingface_hub on one line, without its pointer to HTTP status documentation."""
    lines = [line.strip(" -") for line in str(error).splitlines()
             if line.strip() and "For more information" not in line]
    return " ".join(lines) or type(error).__name__


def _with_repo_id(path: Path, repo_id: str):
    """The file's bytes, with the placeholder in model cards replaced by the repo id; other files by path."""
    if path.name != "README.md":
        return str(path)
    return path.read_text(encoding="utf-8").replace(REPO_PLACEHOLDER, repo_id).encode("utf-8")


@dataclass
class PushArguments:
    private: bool = field(default=False, metadata={
        "help": "Create the repo as private (an existing repo keeps its visibility)."})
    revision: str | None = field(default=None, metadata={
        "help": "Branch to commit to (created if missing; default: main)."})
    commit_message: str | None = field(default=None, metadata={"help": "Message of the commit."})


def push_command(args: PushArguments, folder: str, repo_id: str) -> None:
    """Upload a saved folder to the Hub in one commit (token from `hf auth login` or HF_TOKEN)."""
    if not Path(folder).is_dir():
        raise ValueError(f"Model folder {folder!r} does not exist; give a folder written by save_pretrained.")
    url = push_to_hub(folder, repo_id, private=args.private or None, revision=args.revision,
                      commit_message=args.commit_message)
    print(f"Pushed {folder} to {url}")


command = Command(push_command, (PushArguments,), (("folder", "Folder to upload (a model or adapter folder)."),
                                                   ("repo_id", "Hub repo: owner/name, or a name under your user.")))
