"""Atomic output helpers: a run either leaves complete files or none at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file or directory the permissions a plain open() or mkdir() would.

    mkstemp and mkdtemp create private (0600/0700) entries, which would leave results unreadable
    for other users after the rename.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it into place."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Every output directory gets this marker, so that a later run replaces only directories that
# procon wrote itself and never a user's own folder.
OUTPUT_MARKER = ".procon-output"


def check_output_dir(out: str | os.PathLike) -> Path:
    """Raise InputError unless `out` can be written: missing, or a directory procon wrote before."""
    from procon.errors import InputError

    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{out}: output path exists and is not a directory; choose another --out")
        if any(out.iterdir()) and not (out / OUTPUT_MARKER).is_file():
            raise InputError(f"{out}: output directory exists, is not empty and was not written by procon; "
                             "choose another --out or remove it")
        if out.resolve() == Path.cwd().resolve():
            raise InputError(f"{out}: the current directory cannot be an output directory; choose a subdirectory")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{out}: {parent} is a file, not a directory; choose another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{out}: {parent} is not writable; choose another --out")
            break
    return out


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out` only if the block finishes.

    An existing `out` is kept until the new one is complete, so a failed run leaves the
    previous results untouched and no half-written directory behind. Only a missing `out` or
    one that procon wrote before (it contains OUTPUT_MARKER) is replaced.
    """
    from procon.errors import InputError

    out = check_output_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    make_public(tmp, directory=True)
    (tmp / OUTPUT_MARKER).write_text("written by procon; a later run with this --out replaces this directory\n")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        check_output_dir(out)  # the block may have run for hours; the target may have changed since
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
