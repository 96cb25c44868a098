"""Scalar metrics a run writes: `WORKDIR/metrics.jsonl` and TensorBoard event files.

Each JSONL line is `{"step": int, "time": unix seconds, <name>: value, ...}`. JSON has no NaN or
infinity, so non-finite values are written as the strings "nan", "inf" and "-inf";
`read_metrics_jsonl` turns them back into floats.

TensorBoard files are written without TensorFlow or the protobuf package. An event file is a
sequence of TFRecords (uint64 length, masked CRC-32C of the length, payload, masked CRC-32C of the
payload), each payload an `Event` protobuf encoded by hand. Only the fields scalars need exist:
Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5},
Summary{value=1}, Summary.Value{tag=1 string, simple_value=2 float}.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Mapping

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38

# --- CRC-32C (Castagnoli), the checksum TFRecord framing uses ----------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reflected Castagnoli polynomial
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`; pure Python is fast enough for a few hundred bytes per logged step."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotating and offsetting keeps a CRC of CRC-bearing data meaningful."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord frame around `payload`."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


# --- Protobuf wire format, just the Event fields above ---------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as two's complement, as protobuf encodes negative numbers
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _key(field_number, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    # struct refuses finite doubles beyond float32's range; TensorBoard would show them as inf anyway.
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)
    return struct.pack("<f", value)


def encode_event(wall_time: float, step: int | None = None, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """Serialised `Event` protobuf carrying a file version or one `simple_value` per scalar."""
    event = _key(1, 1) + struct.pack("<d", wall_time)
    if step is not None:
        event += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _key(2, 5) + _float32(value))
                          for tag, value in scalars.items())
        event += _length_delimited(5, values)
    return event


class EventFileWriter:
    """Appends scalar summaries to `directory/events.out.tfevents.<unix time>.<hostname>`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = directory / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        # Append: a writer reopened within the same second adds a second version record, which
        # readers accept, instead of truncating the first writer's events.
        self._stream: BinaryIO = open(self.path, "ab")
        self._stream.write(tfrecord(encode_event(now, file_version="brain.Event:2")))

    def write_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        wall_time = time.time() if wall_time is None else wall_time
        self._stream.write(tfrecord(encode_event(wall_time, step=step, scalars=scalars)))

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


# --- The run's metrics writer ----------------------------------------------------------------


def _scalar(name: str, value: Any) -> float:
    try:
        return float(value)  # Python, numpy and 0-d jax scalars alike
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {name!r} is not a scalar: {value!r}") from e


def _json_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class MetricsWriter:
    """Writes scalars to `WORKDIR/metrics.jsonl` and `WORKDIR/tensorboard/`, on the primary process only.

    Other processes get a writer whose methods do nothing, so the training loop needs no branch.
    Every `write_scalars` flushes: it runs once per logging interval, and a killed run keeps its curves.
    """

    def __init__(self, workdir: str | Path, process_index: int = 0):
        self.enabled = process_index == 0
        self.workdir = Path(workdir)
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / METRICS_FILE, "a")  # append: a resumed run continues the file
        self._events = EventFileWriter(self.workdir / TENSORBOARD_DIR)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Log `scalars` (name -> number, numpy or jax scalar) at `step`."""
        if not self.enabled or not scalars:
            return
        values = {name: _scalar(name, value) for name, value in scalars.items()}
        now = time.time()
        row = {"step": int(step), "time": now, **{name: _json_value(v) for name, v in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._events.write_scalars(int(step), values, wall_time=now)
        self.flush()

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `metrics.jsonl`, with "nan"/"inf"/"-inf" strings turned back into floats.

    A truncated last line (the process was killed mid-write) is dropped; a bad line elsewhere is an error.
    """
    lines = [(number, line) for number, line in enumerate(Path(path).read_text().splitlines(), start=1)
             if line.strip()]
    rows = []
    for index, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if index == len(lines) - 1:
                break
            raise ValueError(f"{path}:{number}: not a JSON object: {e}") from e
        rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
    return rows
