"""One run per workdir, a workdir that can be written, and save failures said in one line.

`WorkdirLock(workdir)` is what `train_and_evaluate` holds for the whole run:

  - `acquire()` first probes that the workdir can be written (create it, write + fsync + delete a
    small file), on every process: a workdir that is a file, read-only or full stops the run in one
    line naming the path and the OS error, before anything is built or compiled.
  - Then process 0 (only it: on a shared filesystem the other hosts of a multi-host run do nothing)
    creates `WORKDIR/.lock` atomically (O_CREAT | O_EXCL) holding JSON {host, pid, started (UTC),
    command}. A second run on the workdir gets `WorkdirInUseError`, one line naming that pid, host,
    start time and command.
  - A lock left by a crash or a kill -9 is stale and taken over with a logged warning: on the same
    host when its pid is no longer alive (or is this very process's pid, e.g. a container restart,
    without this process holding it); from another host, whose pid cannot be checked, when its
    mtime is older than `STALE_AFTER_S` (10 minutes). While the run lives, a daemon thread refreshes
    the lock's mtime every `HEARTBEAT_S` (compiling, sampling and long log intervals included), so
    a live run's lock never looks stale (seen from another host, a SIGSTOPped run's does).
  - The lock is deleted on exit from the `with` block, exception or not (only if it is still ours).

Limits: the check-then-take-over of a stale lock is not atomic, so two runs that find the same
stale lock at the same instant can both start (the window is the few microseconds between reading
and replacing it); a host name shared by two machines (e.g. two containers with one hostname and
separate pid namespaces on one shared volume) defeats the pid check.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from absl import logging

from vdm_jax import checkpoints
from vdm_jax.config import ExperimentConfig

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0  # how often a live run refreshes its lock's mtime
STALE_AFTER_S = 600.0  # a lock from another host not refreshed for this long is stale
_HELD: set[str] = set()  # lock paths this process holds (a second acquire in-process is refused)
_HELD_GUARD = threading.Lock()


class WorkdirError(RuntimeError):
  """The workdir cannot be used: another run holds it, it cannot be written, or a save failed.

  train.py prints these as one line (`train.py: <message>`) and exits non-zero.
  """


class WorkdirInUseError(WorkdirError):
  """Another live run holds the workdir's lock."""


class WorkdirNotWritableError(WorkdirError):
  """The workdir (or its checkpoints folder) cannot be created or written."""


class CheckpointSaveError(WorkdirError):
  """A checkpoint save (possibly an asynchronous one) failed; the previous checkpoint is intact."""


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes, fsyncs and deletes a small file in it (and in checkpoints/).

  Raises:
    WorkdirNotWritableError: one line naming the path and the OS error.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirNotWritableError(f"cannot use {workdir} as --workdir: it is a file, not a directory; "
                                  "pass a directory (it is created if missing)")
  folders = [workdir, os.path.join(workdir, checkpoints.CHECKPOINTS)]
  for folder in folders[:1] + [f for f in folders[1:] if os.path.lexists(f)]:
    try:
      os.makedirs(folder, exist_ok=True)
      fd, path = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
      try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
      finally:
        os.close(fd)
        os.unlink(path)
    except OSError as e:
      raise WorkdirNotWritableError(f"cannot write in {folder}: {e}; make it writable (or free space) "
                                    "or use another --workdir") from None


def _now_utc() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  except (OverflowError, ValueError):
    return False
  return True


def _read(path: str) -> tuple[dict | None, float | None]:
  """(the lock's JSON or None when unreadable, its mtime or None when there is no lock)."""
  info = None
  for attempt in range(5):  # a lock being written right now reads empty for a moment
    try:
      mtime = os.stat(path).st_mtime
    except FileNotFoundError:
      return None, None
    except OSError as e:
      raise WorkdirNotWritableError(f"cannot read the lock {path}: {e}") from None
    try:
      with open(path, encoding="utf-8") as f:
        info = json.load(f)
      break
    except FileNotFoundError:
      return None, None
    except (OSError, ValueError):
      if attempt < 4:
        time.sleep(0.1)
  return (info if isinstance(info, dict) else None), mtime


class WorkdirLock:
  """Holds WORKDIR/.lock for the duration of a `with` block (see the module docstring)."""

  def __init__(self, workdir: str, *, enabled: bool = True, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    """Args:
      workdir: the run's --workdir.
      enabled: take the lock (process 0); False only probes that the workdir can be written.
      heartbeat_s: seconds between refreshes of the lock's mtime while held.
      stale_after_s: age of the mtime after which another host's lock counts as stale.
    """
    self.workdir = workdir
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.enabled = enabled
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.info: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc: object) -> None:
    self.release()

  def acquire(self) -> None:
    """Probes the workdir, then takes the lock (process 0).

    Raises:
      WorkdirNotWritableError: the workdir cannot be created or written.
      WorkdirInUseError: another live run holds the lock.
    """
    check_writable(self.workdir)
    if not self.enabled or self.info is not None:
      return
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now_utc(),
            "command": shlex.join(sys.argv)}
    with _HELD_GUARD:
      while not self._create(info):
        self._take_over_if_stale()
      _HELD.add(self.path)
    self.info = info
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
    self._thread.start()

  def _create(self, info: dict) -> bool:
    """Creates the lock atomically; False when one exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    except OSError as e:
      raise WorkdirNotWritableError(f"cannot create the lock {self.path}: {e}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(info, f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over_if_stale(self) -> None:
    """Deletes the existing lock if stale (logged); raises WorkdirInUseError if not."""
    other, mtime = _read(self.path)
    if mtime is None:
      return  # released in the meantime: try again
    reason = self._stale_reason(other, mtime)
    if reason is None:
      raise WorkdirInUseError(self._in_use_message(other, mtime))
    logging.warning("workdir %s: taking over the stale lock of pid %s on host %s since %s (%s)",
                    self.workdir, _field(other, "pid"), _field(other, "host"),
                    _field(other, "started"), reason)
    again, _ = _read(self.path)
    if again == other:  # still the lock just judged stale, not a new one
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass

  def _stale_reason(self, other: dict | None, mtime: float) -> str | None:
    """Why the lock is stale, or None when it may belong to a live run."""
    age = time.time() - mtime
    if other is not None and other.get("host") == socket.gethostname():
      pid = other.get("pid")
      if not isinstance(pid, int):
        return "no pid in it"
      if pid == os.getpid():
        return None if self.path in _HELD else "its pid is this process, which does not hold it"
      return None if _pid_alive(pid) else "that process is gone"
    if age > self.stale_after_s:
      return f"not refreshed for {age / 60:.0f} minutes"
    return None

  def _in_use_message(self, other: dict | None, mtime: float) -> str:
    if other is None:
      return (f"workdir {self.workdir} is in use: its lock {self.path} is unreadable and was "
              f"written {time.time() - mtime:.0f} s ago; stop that run or use another --workdir")
    message = (f"workdir {self.workdir} is in use by pid {_field(other, 'pid')} on host "
               f"{_field(other, 'host')} since {_field(other, 'started')} (command "
               f"{_field(other, 'command')}); stop that run or use another --workdir")
    if other.get("host") != socket.gethostname():
      message += (f" (a lock from another host is taken over once not refreshed for "
                  f"{self.stale_after_s / 60:g} minutes)")
    return message

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.path)
      except OSError as e:
        if not warned:
          logging.warning("cannot refresh the workdir lock %s (%s): another run could take it "
                          "over", self.path, e)
          warned = True

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock if it is still this run's (idempotent)."""
    if self.info is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      current, _ = _read(self.path)
      if current == self.info:
        os.unlink(self.path)
      else:
        logging.warning("the workdir lock %s was replaced or removed while this run held it "
                        "(now: %s); leaving it", self.path, current)
    except (OSError, WorkdirError) as e:  # never mask the exception that ends the run
      logging.warning("cannot delete the workdir lock %s: %s", self.path, e)
    with _HELD_GUARD:
      _HELD.discard(self.path)
    self.info, self._thread = None, None
    self._stop.clear()


def _field(info: dict | None, key: str) -> str:
  return str((info or {}).get(key, "?"))


def save_error(error: BaseException, ckpt: checkpoints.Checkpointer, step: int,
               pending: int | None) -> CheckpointSaveError:
  """The one-line error for a failed checkpoint save.

  An async save fails in the background and surfaces at the next `save` (or the final wait), so the
  step that failed is `pending` (the step last handed to `save`) when it was never finalized, else
  `step`.

  Args:
    error: what Orbax (or the filesystem) raised.
    ckpt: the run's checkpointer.
    step: the step being saved (or waited for) when the error surfaced.
    pending: the step handed to `save` before it, or None.
  """
  try:
    ckpt.wait_until_finished()  # an earlier save still in flight is finalized (Orbax raises once)
  except Exception:  # pylint: disable=broad-except  (the error being reported, or the disk's state)
    pass
  try:
    latest = ckpt.latest_step()
  except Exception:  # pylint: disable=broad-except
    latest = None
  failed = pending if pending is not None and (latest is None or pending > latest) else step
  text = str(error).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  intact = (f"the previous checkpoint {latest} is intact: fix the cause and run the same command to "
            "resume from it" if latest is not None else "no earlier checkpoint was written")
  return CheckpointSaveError(f"saving checkpoint step {failed} in {ckpt.directory} failed: {text}; "
                             f"{intact}")


# Config sections that must match for a workdir's checkpoints to be resumed (train and distill).
_COMPATIBLE_SECTIONS = ("model", "diffusion")
_COMPATIBLE_DATA_KEYS = ("name", "num_frames", "resolution", "image_frames")
# Model fields that change how the same parameters are computed with, not what they are.
_COMPUTE_ONLY = {("model", "attention_impl"), ("model", "attention_chunk_size")}


def check_workdir_compatible(manifest: dict, exp: ExperimentConfig, workdir: str) -> None:
  """ValueError unless workdir's checkpoints come from the same model, diffusion and data shapes.

  Fields that change only how the same function is computed (_COMPUTE_ONLY) may differ.
  """
  saved = manifest.get("config", {})
  current = exp.to_dict()
  keys = [(section, key) for section in _COMPATIBLE_SECTIONS for key in current[section]
          if (section, key) not in _COMPUTE_ONLY]
  keys += [("data", key) for key in _COMPATIBLE_DATA_KEYS]
  defaults, diffs = ExperimentConfig.from_config_dict({}).to_dict(), []
  for section, key in keys:  # a key newer than the checkpoint counts as its default
    old, new = saved.get(section, {}).get(key, defaults[section][key]), current[section][key]
    if _normalise(old) != _normalise(new):
      diffs.append(f"{section}.{key}: checkpoint {old!r} vs config {new!r}")
  if diffs:
    raise ValueError(f"workdir {workdir} holds checkpoints of an incompatible config:\n  "
                     + "\n  ".join(diffs)
                     + "\nUse a new --workdir, or the config the checkpoints were trained with.")


def _normalise(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value
