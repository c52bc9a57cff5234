"""Why a model did not load, in one sentence: what was tried, what is missing, what to do.

A model setting is a Hugging Face id, a local folder or `tiny`. When it cannot be loaded,
transformers and diffusers raise an ``OSError`` at the end of a long traceback whose last line
rarely says what to change. ``load_problem`` turns the usual causes (a folder that does not
exist or holds no model, an id that is not in the local cache while the Hub cannot be reached,
an unknown or gated id) into that sentence; ``articleforge generate``, ``serve``, ``/readyz``
and the logs show it instead of the traceback. Anything else keeps its traceback: it is a bug.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["text", "image"]
# The file that marks a model folder: a transformers config, a diffusers pipeline index.
MARKER = {"text": "config.json", "image": "model_index.json"}
_UNREACHABLE = frozenset(
    {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectError",
        "ConnectTimeout",
        "ConnectionError",
    }
)


class ModelLoadError(Exception):
    """A model setting that cannot be loaded; the message is the sentence for the user."""


def _setting(kind: Kind) -> str:
    return f"ARTICLEFORGE_{kind.upper()}_MODEL"


def looks_local(name: str) -> bool:
    """A path, never a Hub id (`org/name`): absolute, relative with a dot, or under ~."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def check_local(name: str, kind: Kind) -> None:
    """Raises ``ModelLoadError`` for a path that is no model folder, before any loading (and
    before a library would ask the Hub for a repository named like the path)."""
    if not looks_local(name):
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"{kind} model {name!r} could not be loaded: the folder {path} does not exist; "
            f"set {_setting(kind)} to a model folder, a Hugging Face id or `tiny`"
        )
    if not (path / MARKER[kind]).is_file():
        raise ModelLoadError(
            f"{kind} model {name!r} could not be loaded: {path} holds no {MARKER[kind]}, so it "
            f"is not a {kind} model folder; point {_setting(kind)} at the folder that "
            "`save_pretrained` wrote (or a Hugging Face id, or `tiny`)"
        )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def load_problem(kind: Kind, name: str, exc: BaseException) -> str | None:
    """The sentence for a known cause of ``exc``, or None when it is something else."""
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if looks_local(name):
        try:
            check_local(name, kind)
        except ModelLoadError as problem:
            return str(problem)
        return None
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = _chain(exc)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (
            f"{kind} model {name!r} could not be loaded: it is gated on the Hugging Face Hub; "
            f"accept its license at https://huggingface.co/{name} and set HF_TOKEN"
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return (
            f"{kind} model {name!r} could not be loaded: the Hugging Face Hub has no such "
            f"repository (or it is private: set HF_TOKEN); check {_setting(kind)}"
        )
    try:
        cached = isinstance(try_to_load_from_cache(name, MARKER[kind]), str)
    except Exception:  # not even a valid repository id
        cached = False
    text = " ".join(str(e) for e in chain)
    offline = bool(constants.HF_HUB_OFFLINE)
    unreachable = (
        offline
        or "couldn't connect" in text
        or any(type(e).__name__ in _UNREACHABLE for e in chain)
    )
    if not cached and unreachable:
        why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached"
        return (
            f"{kind} model {name!r} could not be loaded: it is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {why}; download it first where the network is "
            f"reachable (`huggingface-cli download {name}`) and copy that cache here (or set "
            f"HF_HOME to it), or set {_setting(kind)} to a local folder or `tiny`"
        )
    if "does not appear to have a file named" in text or "no file named" in text:
        return (
            f"{kind} model {name!r} could not be loaded: it has no {MARKER[kind]}, so it is not "
            f"a {kind} model {'transformers' if kind == 'text' else 'diffusers'} can load; "
            f"check {_setting(kind)}"
        )
    return None
