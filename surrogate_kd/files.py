"""Writing files so that nothing half-written is ever read, and outputs are checked before any work.

atomic_write       a temporary file (its name carries the process id), then one rename
writable_*         an output that cannot be written is a one-line error before the work, not after it
claim_directory    an output directory is taken only when it is absent, empty, or already one of ours
Modes follow the umask like a plain open()/mkdir, whatever the writing library does.
"""

import os
from pathlib import Path
from typing import Callable

from .errors import UserError, first_line


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have `write(tmp)` fill a temporary file, then rename it to `path`: a reader never sees half a file.

    The temporary name carries the process id, so two runs writing into one directory never
    rename or truncate each other's half-written file. A failed write leaves nothing behind.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        # Some writers (safetensors' save_file) create 0600 files; ours follow the umask like open().
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process umask. os.umask can only be read by setting it, which would race with other
    threads creating files, so read it from /proc where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def writable_directory(path: Path, what: str = "output") -> Path:
    """Create `path` (and parents) and prove it is writable, or a one-line UserError, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {what} {path}: {e.strerror or first_line(e)}") from None
    return path


def writable_file(path: Path, what: str = "output") -> Path:
    """Check that a file can be written at `path` (its directory exists or can be made), before any work."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    writable_directory(path.parent if str(path.parent) else Path("."), what)
    return path


def claim_directory(out: Path, marker: str, what: str, overwrite: bool = False, inputs=(), ignore=()) -> None:
    """Refuse, with a one-line UserError, an output directory `out` that this command would lose
    something in: a file at that path, a directory holding one of `inputs` (what the command reads),
    a non-empty directory without `marker` (the file that says it holds `what`, e.g. a pool's
    manifest), or, unless `overwrite`, one that holds `what` already. `ignore`: names a directory
    of ours may hold beside the marker (a lock file).

    The one rule of every command that writes a directory (runs, pools, imported checkpoints)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; give a directory")
    refuse_inputs(out, inputs)
    if not out.is_dir():
        return
    if (out / marker).exists():
        if not overwrite:
            raise UserError(f"{out} already holds a {what}; choose another --out, or pass --overwrite to replace it")
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ignore)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise UserError(f"{out} is not empty and holds no {what} (found {shown}); choose another --out")


def refuse_inputs(out: Path, inputs, why: str = "") -> None:
    """UserError when the output directory `out` is or holds one of `inputs` (files a command reads:
    it must never write over them, whatever --overwrite says). `why`: said after the advice."""
    here = Path(out).resolve()
    for path in map(Path, inputs):
        target = path.resolve()
        if target == here or here in target.parents:
            raise UserError(f"--out {out} holds {path}, which this command reads; choose another --out{why}")
