"""Make this process's transformers act as a release that has removed the name `past_key_values` (5.24
renamed it `cache` and announced the old name's removal for 5.40): each place where 5.24 still accepts the
old name raises instead. Imports only transformers, so that a process without our package can use it."""

import functools

from transformers import masking_utils
from transformers.utils import generic

OLD_NAMES = ("past_key_values", "cache_params")


def _removed(name: str):
    return TypeError(f"{name!r} was removed; use 'cache'")


def _refuse_old_kwargs(kwargs: dict) -> None:
    for name in OLD_NAMES:
        if name in kwargs:
            raise _removed(name)


def _new_key_only(self, key: str) -> str:
    if key in OLD_NAMES:
        raise _removed(key)
    return key


def _old_attribute(self):
    raise _removed("past_key_values")


def _without_old_kwargs(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _refuse_old_kwargs(kwargs)
        return function(*args, **kwargs)

    return wrapper


def remove_past_key_values(setattr=setattr, *modules) -> None:
    """Remove the old name from transformers, and from `create_causal_mask` as `modules` imported it.
    Pass pytest's `monkeypatch.setattr` to have it all undone after the test."""
    if not hasattr(generic, "_rename_kwargs_for_bc"):
        raise RuntimeError("this transformers still calls the cache past_key_values: nothing to remove")
    setattr(generic, "_rename_kwargs_for_bc", _refuse_old_kwargs)  # the output dataclasses' __init__
    setattr(generic.ModelOutput, "_replace_old_cache_name", _new_key_only)  # output["past_key_values"], `in`
    setattr(generic.ModelOutput, "past_key_values", property(_old_attribute))
    strict_mask = _without_old_kwargs(masking_utils.create_causal_mask)
    for module in (masking_utils, *modules):
        setattr(module, "create_causal_mask", strict_mask)
