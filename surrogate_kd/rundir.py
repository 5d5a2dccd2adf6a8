"""An output directory belongs to one run: claimed, locked, resumed, and finished atomically.

A run directory holds, from first to last written:

    run.json          who owns it: the command and the run's whole identity (config, teacher
                      fingerprint, data); written when the run claims the directory
    .lock             held (flock) while a process works in it: two runs never share a directory
    metrics.jsonl     one line per log interval; trimmed to the saved step on resume
    state.pt          resumable training state (checkpoint.save_state)
    model.safetensors + model.json   the weights, written when training ends
    result.json       last: the result, with the SHA-256 of the weights it goes with

A run is finished when result.json names weights whose digest matches the file beside it, so
nothing half-written reads as complete, and state.pt is removed only after that. A run refuses
a directory owned by another run, a non-empty directory that holds no run, a path that is a
file, and the directory of the teacher it reads; `overwrite=True` replaces another run (never a
teacher, never foreign files).
"""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .config import field_defaults
from .files import atomic_write_text, claim_directory, refuse_inputs, writable_directory
from .errors import UserError, first_line

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
_FIELD_DEFAULTS = field_defaults()
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so comparisons with a file are exact."""
    return json.loads(json.dumps(value, default=str))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two run identities (JSON-like mappings).

    A config field the old identity lacks (recorded by an earlier version, before the field
    existed) is no difference when the new value is the field's default (config.field_defaults):
    the run is the one it was.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        added = as_json(_FIELD_DEFAULTS.get(prefix.rstrip(".").rpartition(".")[2], {}))
        keys = sorted(set(old) | set(new))
        return [d for k in keys if not (k not in old and k in added and new[k] == added[k])
                for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def same_run(old, new) -> bool:
    return not differences(old, new)


class RunDir:
    """The directory of one training run (`kind` 'train-teacher' or 'distill') with identity `identity`.

    `protect`: files this run reads and must never write over (the teacher's weights): the run
    refuses to use a directory that holds one of them, even with `overwrite`.
    """

    def __init__(self, path: str | Path, kind: str, identity: dict, overwrite: bool = False,
                 protect: tuple[str | Path, ...] = ()):
        self.path, self.kind, self.identity = Path(path), kind, as_json(identity)
        self.overwrite, self.protect = overwrite, tuple(Path(p) for p in protect)
        self._lock = None
        self._fresh = self._created = False  # this claim started the run / made the directory

    # ------------------------------------------------------------------ claiming

    def claim(self) -> dict | None:
        """Take the directory for this run; returns the finished result when the run is already done.

        Raises UserError (before anything is written) when the directory is not this run's to use.
        """
        refuse_inputs(self.path, self.protect, " (a run never writes over its teacher)")
        self._created = not self.path.exists()
        writable_directory(self.path)
        self._acquire_lock()
        try:
            owner = self._owner()
            if owner is None:  # refuses a directory of other files; resuming or replacing a run is decided below
                claim_directory(self.path, RUN_FILE, "surrogate-kd run", overwrite=True, ignore=(LOCK_FILE,))
            elif owner.get("kind") != self.kind or not same_run(owner.get("identity"), self.identity):
                if not self.overwrite:
                    raise UserError(f"{self.path} holds another run ({self._describe(owner)}); choose another --out, "
                                    "or pass --overwrite to replace it")
                self._clear()
                owner = None
            if owner is None:
                atomic_write_text(self.path / RUN_FILE, json.dumps({"kind": self.kind, "identity": self.identity},
                                                                   indent=2))
                self._fresh = True
            return self.finished()
        except BaseException:
            self.release()
            if self._created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    @contextmanager
    def working(self):
        """The block that builds the data and trains: if it fails before the run saved any state
        (bad data, a wrong eval set, Ctrl-C at the start), the files this claim made are removed,
        so a failed command leaves nothing behind; a run with saved state stays, to resume."""
        try:
            yield self
        except BaseException:
            if self._fresh and not (self.path / STATE_FILE).exists():
                for path in self.path.iterdir():
                    if path.name != LOCK_FILE:
                        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                self.release()
                if self._created:
                    shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _acquire_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): ownership is still checked through run.json
            return
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.path} is in use by another run ({holder}); wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Let another process use the directory (the lock also goes when this process exits)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _owner(self) -> dict | None:
        try:
            owner = json.loads((self.path / RUN_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path / RUN_FILE} is unreadable ({first_line(e)}); choose another --out") from None
        return owner if isinstance(owner, dict) else {}

    def _describe(self, owner: dict) -> str:
        if owner.get("kind") != self.kind:
            return f"a {owner.get('kind', 'unknown')} run"
        changed = differences(owner.get("identity"), self.identity)
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        return f"a {self.kind} run with other settings: {shown}"

    def _clear(self) -> None:
        """Delete another run's files (--overwrite): its result first, so it never looks complete
        half-deleted, and its run.json last, so an interrupted clear is still recognisably a run."""
        entries = [p for p in self.path.iterdir() if p.name not in (LOCK_FILE, RUN_FILE, RESULT_FILE)]
        for path in [self.path / RESULT_FILE, *entries, self.path / RUN_FILE]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # ------------------------------------------------------------------ finishing

    def finished(self) -> dict | None:
        """The result of this run when it is complete: result.json for this identity, with the
        weights it names (by digest) beside it."""
        try:
            result = json.loads((self.path / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None
        weights = self.path / MODEL_FILE
        if not same_run(result.get("config"), self.identity) or not weights.exists():
            return None
        if result.get("weights_sha256") != file_digest(weights):
            return None
        return result

    def finish(self, model, result: dict) -> dict:
        """Commit weights and result together: weights first, then result.json naming their digest
        (the commit point), and only then drop the resumable state."""
        from .checkpoint import save_model

        weights = save_model(model, self.path / MODEL_FILE, extra={"config": self.identity})
        result = {**result, "config": self.identity, "weights_sha256": file_digest(weights)}
        atomic_write_text(self.path / RESULT_FILE, json.dumps(result, indent=2))
        (self.path / STATE_FILE).unlink(missing_ok=True)
        self.release()
        return result
