"""User-facing errors: one clear line, a non-zero exit, nothing overwritten. A leaf module: it imports nothing of
this repository (util/runtime.py runs the entry points under it)."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line, the data or the environment that the user can fix."""


def _one_line(message: str) -> str:
    # Errors raised inside DataLoader workers come back wrapped with the worker's traceback;
    # the last line holds the original "UserError: ..." text.
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        last = lines[-1]
        return last.split("UserError: ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def failure_line(err: Exception) -> tuple[int, str]:
    """The exit status and one line for an exception: 2 and its text for a UserError (also one re-raised by a
    DataLoader worker, or a collective's timeout), else 1 and its type and first line (its traceback follows)."""
    text = str(err)
    if isinstance(err, UserError) or (isinstance(err, RuntimeError) and "UserError" in text):
        return EXIT_USER_ERROR, _one_line(text)
    lowered = text.lower()
    if isinstance(err, RuntimeError) and ("timed out" in lowered or "timeout" in lowered) and _distributed():
        import torch.distributed as dist

        return EXIT_USER_ERROR, (
            f"rank {dist.get_rank()}: a collective ({_where(err)}) timed out waiting for the other ranks: one stopped "
            "(its log says why) or is still busy; raise --dist-timeout if a step legitimately takes longer"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return 1, f"{type(err).__name__}: {first} (the traceback is in this rank's log)"


def _where(err: Exception) -> str:
    """The innermost frame of the traceback in this repository's code: file:line (function)."""
    import traceback

    return code_location(traceback.extract_tb(err.__traceback__)) or "torch"


def code_location(frames, skip: str | None = None) -> str | None:
    """The innermost of `frames` (traceback.FrameSummary) in this repository's own files (not an installed package,
    not the file `skip`), as file:line (function) relative to the repository; None when there is none."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root) and "site-packages" not in frame.filename and str(path) != skip:
            return f"{path.relative_to(root)}:{frame.lineno} ({frame.name})"
    return None


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
