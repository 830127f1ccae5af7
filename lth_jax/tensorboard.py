"""TensorBoard event files, written and read without TensorFlow (or any other dependency).

A writer for ``tensorboard --logdir ROOT``: one subfolder per run (`run_name`: level, variant and
trial, e.g. ``level_03/ticket/trial_0``), scalar points buffered by `TensorBoardWriter.add_curves`
(or `add_scalar`) and written by `flush`. Resuming is exact: a writer opened on a folder that
already holds event files reads them back, and per run and tag it skips every point at or before
the last step already written, so a run resumed from a checkpoint and sending its curves again
neither duplicates nor loses points.

The files are what TensorFlow's summary writers produce: TFRecords (length, masked CRC-32C,
payload, masked CRC-32C) of ``tensorflow.Event`` protocol buffers, the first saying
``file_version: "brain.Event:2"`` (so that TensorBoard never purges points it takes for a
restart), then one Event per step holding ``Summary.Value``s with ``simple_value`` (float32, as
TensorBoard stores scalars). The few protobuf fields needed are encoded and decoded here.

`read_scalars` reads a folder back (the tests use it; so can a notebook). A record cut short by a
crash ends the reading of its file quietly, as TensorBoard does.

Recommended tags (`TAGS`; TensorBoard groups a tag's prefix before "/" into one section):
``loss/train`` (the mean training loss of each evaluation period), ``loss/validation``,
``accuracy/validation``, ``accuracy/test``, ``density`` (the fraction of weights kept), and
``speed/model_steps_per_s``.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "TAGS",
    "TensorBoardWriter",
    "run_name",
    "read_scalars",
    "read_events",
    "EVENT_FILE_PREFIX",
]

#: Every event file's name starts so; TensorBoard recognises event files by "tfevents" in it.
EVENT_FILE_PREFIX = "events.out.tfevents."

#: The tags of the lottery's curves: curve key -> TensorBoard tag.
TAGS: Mapping[str, str] = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "val_accuracy": "accuracy/validation",
    "test_accuracy": "accuracy/test",
    "density": "density",
    "model_steps_per_s": "speed/model_steps_per_s",
}


def run_name(level: int, variant: str, trial: int, branch: str = "") -> str:
    """The run folder (relative to the writer's root) of one trial of one variant at one level:
    ``level_LL/VARIANT/trial_T``, with ``VARIANT-BRANCH`` for a branch. TensorBoard's run list
    then sorts by level, and its filter selects e.g. all tickets (``ticket/``) or one trial.

    Raises ValueError on a negative level or trial, or a variant/branch that is empty (variant),
    holds "/" or starts with ".".
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level must be an int >= 0, got {level!r}")
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise ValueError(f"trial must be an int >= 0, got {trial!r}")
    for what, value in (("variant", variant), ("branch", branch)):
        if not isinstance(value, str) or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError(f"{what} must be a folder name without '/', got {value!r}")
    if not variant:
        raise ValueError("variant must not be empty")
    return f"level_{level:02d}/{variant}{'-' + branch if branch else ''}/trial_{trial}"


class TensorBoardWriter:
    """Scalars of many runs under one root folder, in TensorBoard's event-file format.

    Contract:

    * Runs are folders relative to `root` ("/"-separated; see `run_name`). A run's points go to
      one event file per writer (created at its first flush), next to any from earlier writers.
    * Per run and tag, steps only go forward: a point whose step is at or before the last step
      written for its (run, tag), by this writer or an earlier one on the same folder (read back
      from the files on the run's first use), is skipped. A NaN value means "not measured yet"
      and is skipped without moving the last step. So sending all curves computed so far after
      each chunk (`add_curves` with `upto`) writes each point exactly once, also across resumes.
    * Points are buffered in memory until `flush` (or `close`, or leaving a ``with`` block), which
      appends them to the files; nothing stays open between flushes, so a writer costs no file
      handles however many runs it has. A crash loses only unflushed points, which the resumed
      run sends again.
    * One writer per root at a time (the experiment's workdir lock provides it); in a
      multi-process run only process 0 should write.
    * `enabled=False` makes every method a no-op (runtime.tensorboard off).
    """

    def __init__(self, root: str | os.PathLike, *, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self._last: dict[str, dict[str, int]] = {}   # run -> tag -> last step written or buffered
        self._pending: dict[str, dict[int, dict[str, float]]] = {}  # run -> step -> tag -> value
        self._files: dict[str, Path] = {}  # run -> this writer's event file
        self._closed = False

    # -------------------------------------------------------------------------------------- input

    def last_step(self, run: str, tag: str) -> int | None:
        """The last step of `tag` in `run` written or buffered so far (None: no point yet)."""
        return self._run_last(run).get(tag)

    def add_scalar(self, run: str, tag: str, step: int, value: float) -> bool:
        """Buffer one point; returns whether it was taken (False: NaN, or `step` at or before
        the last step of (run, tag)). `step` must be an int >= 0."""
        if not self.enabled:
            return False
        self._check_open()
        step = _as_step(step)
        value = float(value)
        last = self._run_last(run)
        if math.isnan(value) or (tag in last and step <= last[tag]):
            return False
        last[tag] = step
        self._pending.setdefault(run, {}).setdefault(step, {})[tag] = value
        return True

    def add_scalars(self, run: str, step: int, values: Mapping[str, float]) -> int:
        """`add_scalar` for each (tag, value) of `values` at one step; returns how many were taken."""
        return sum(self.add_scalar(run, tag, step, value) for tag, value in values.items())

    def add_curves(
        self,
        run: str,
        steps: Sequence[int] | Iterable[int],
        curves: Mapping[str, Sequence[float] | Iterable[float]],
        upto: int | None = None,
    ) -> int:
        """Buffer the points of several curves that share their steps (e.g. the evaluation
        iterations of a level), skipping those already written; returns how many were taken.

        Args:
          run: the run folder (see `run_name`).
          steps: the step of each point, increasing (NumPy arrays work).
          curves: tag -> values, each as long as `steps`; NaN = not measured (yet): skipped.
          upto: the last step computed so far; points after it are skipped whatever their value
            (their entries may hold zeros or leftovers). None: no limit.

        Raises ValueError when a curve's length differs from `steps`'.
        """
        if not self.enabled:
            return 0
        steps = [_as_step(s) for s in steps]
        taken = 0
        for tag, values in curves.items():
            values = [float(v) for v in values]
            if len(values) != len(steps):
                raise ValueError(f"curve {tag!r} of run {run!r} has {len(values)} values for "
                                 f"{len(steps)} steps")
            for step, value in zip(steps, values):
                if upto is not None and step > upto:
                    break
                taken += self.add_scalar(run, tag, step, value)
        return taken

    # ------------------------------------------------------------------------------------- output

    def flush(self) -> None:
        """Append every buffered point to its run's event file (one Event per step, in step
        order), creating folders and files as needed."""
        if not self.enabled:
            return
        for run, by_step in list(self._pending.items()):
            if not by_step:
                continue
            path = self._files.get(run)
            records = []
            if path is None:
                path = self._new_file(run)
                records.append(_event(time.time(), 0, file_version="brain.Event:2"))
            now = time.time()
            records.extend(_event(now, step, values=by_step[step]) for step in sorted(by_step))
            with open(path, "ab") as f:
                f.write(b"".join(_record(r) for r in records))
            self._files[run] = path
            self._pending[run] = {}

    def close(self) -> None:
        """Flush; later additions raise ValueError."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("TensorBoardWriter is closed")

    def _run_folder(self, run: str) -> Path:
        parts = [p for p in run.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"run must be a relative folder path, got {run!r}")
        return self.root.joinpath(*parts)

    def _run_last(self, run: str) -> dict[str, int]:
        """The last step per tag of `run`, read from its existing event files on first use."""
        last = self._last.get(run)
        if last is None:
            last = {}
            folder = self._run_folder(run)
            for path in _event_files(folder):
                for _, step, values in read_events(path):
                    for tag in values:
                        if step > last.get(tag, -1):
                            last[tag] = step
            self._last[run] = last
        return last

    def _new_file(self, run: str) -> Path:
        folder = self._run_folder(run)
        folder.mkdir(parents=True, exist_ok=True)
        # Named as TensorFlow names them (time first, so that TensorBoard reads a run's files in
        # the order they were written); pid and a counter keep names unique.
        stem = f"{EVENT_FILE_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        for n in range(1000):
            path = folder / f"{stem}.{n}"
            try:
                with open(path, "xb"):
                    pass
                return path
            except FileExistsError:
                continue
        raise OSError(f"cannot create a new event file in {folder}")


# ----------------------------------------------------------------------------------------------------
# Reading


def _event_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(EVENT_FILE_PREFIX))


def read_events(path: str | os.PathLike) -> Iterator[tuple[float, int, dict[str, float]]]:
    """The scalar events of one event file, in file order: (wall_time, step, {tag: value}) for
    each Event holding a summary (the file-version event and non-scalar values are left out).
    Stops quietly at a record cut short or damaged (a writer killed mid-write)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if _masked_crc(header) != length_crc or pos + 12 + length + 4 > len(data):
            return
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        if _masked_crc(payload) != payload_crc:
            return
        pos += 16 + length
        try:
            event = _decode_event(payload)
        except (IndexError, ValueError, struct.error):
            return
        if event is not None:
            yield event


def read_scalars(root: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every scalar under `root`: run -> tag -> [(step, value), ...] in the order written (the
    order TensorBoard reads them: files by name, records in order). A run is a folder holding
    event files, named by its path relative to `root` ("." for `root` itself)."""
    root = Path(root)
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if not root.is_dir():
        return out
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        files = _event_files(folder)
        if not files:
            continue
        run = folder.relative_to(root).as_posix()
        tags = out.setdefault(run, {})
        for path in files:
            for _, step, values in read_events(path):
                for tag, value in values.items():
                    tags.setdefault(tag, []).append((step, value))
    return out


# ----------------------------------------------------------------------------------------------------
# TFRecord framing and the protobuf fields of Event / Summary / Summary.Value
#
# Event:          1 wall_time (double), 2 step (int64), 3 file_version (string), 5 summary (Summary)
# Summary:        1 value (repeated Summary.Value)
# Summary.Value:  1 tag (string), 2 simple_value (float)


def _as_step(step: object) -> int:
    try:
        value = int(step)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"a step must be an int >= 0, got {step!r}") from None
    if value != step or value < 0:
        raise ValueError(f"a step must be an int >= 0, got {step!r}")
    return value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str = "",
           values: Mapping[str, float] | None = None) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _varint(2 << 3 | 0) + _varint(step)
    if file_version:
        out += _field_bytes(3, file_version.encode())
    if values is not None:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5)
                         + struct.pack("<f", value))
            for tag, value in values.items()
        )
        out += _field_bytes(5, summary)
    return out


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: an int for varints, bytes for
    length-delimited fields and fixed32/fixed64 (decoded by the caller)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield number, wire, value


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _decode_event(payload: bytes) -> tuple[float, int, dict[str, float]] | None:
    wall_time, step, summary = 0.0, 0, None
    for number, wire, value in _fields(payload):
        if number == 1 and wire == 1:
            (wall_time,) = struct.unpack("<d", value)
        elif number == 2 and wire == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value  # int64
        elif number == 5 and wire == 2:
            summary = value
    if summary is None:
        return None
    values: dict[str, float] = {}
    for number, wire, value in _fields(summary):
        if number != 1 or wire != 2:
            continue
        tag, scalar = None, None
        for n, w, v in _fields(value):
            if n == 1 and w == 2:
                tag = v.decode("utf-8", "replace")
            elif n == 2 and w == 5:
                (scalar,) = struct.unpack("<f", v)
        if tag is not None and scalar is not None:
            values[tag] = scalar
    return wall_time, step, values


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecords. Pure Python: records here are small."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", _masked_crc(header)) + payload
            + struct.pack("<I", _masked_crc(payload)))
