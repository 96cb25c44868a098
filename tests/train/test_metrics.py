"""MetricsWriter: JSONL round trip, and TensorBoard event files checked by an independent reader.

TensorBoard itself is not a dependency, so the reader here is written from the format's
definitions: a bit-by-bit CRC-32C (no table, unlike the writer), TFRecord framing, and a generic
protobuf wire-format decoder.
"""

import json
import math
import re
import socket
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest

from vlalign_jax.train.metrics import MetricsWriter, crc32c, read_metrics_jsonl


def reference_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def reference_masked(data: bytes) -> int:
    crc = reference_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32


def read_tfrecords(path) -> list[bytes]:
    data, records, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == reference_masked(header)
        payload = data[at + 12:at + 12 + length]
        assert len(payload) == length
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == reference_masked(payload)
        records.append(payload)
        at += 16 + length
    return records


def decode_protobuf(data: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, raw value): ints for varints, bytes for the rest."""
    fields, at = [], 0

    def varint():
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        elif wire == 2:
            length = varint()
            value, at = data[at:at + length], at + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, wire, value))
    return fields


def decode_event(payload: bytes) -> dict:
    event = {"values": {}}
    for number, wire, value in decode_protobuf(payload):
        if (number, wire) == (1, 1):
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif (number, wire) == (2, 0):
            event["step"] = value - 2**64 if value >= 2**63 else value
        elif (number, wire) == (3, 2):
            event["file_version"] = value.decode()
        elif (number, wire) == (5, 2):
            for v_number, v_wire, summary_value in decode_protobuf(value):
                assert (v_number, v_wire) == (1, 2)
                parts = {n: v for n, _, v in decode_protobuf(summary_value)}
                event["values"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        else:
            raise AssertionError(f"unexpected Event field {number}")
    return event


def test_crc32c_matches_known_vector_and_bitwise_reference():
    assert crc32c(b"123456789") == 0xE3069283 == reference_crc32c(b"123456789")
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for size in (1, 7, 64, 1000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32c(data) == reference_crc32c(data)


def test_tensorboard_events_round_trip(tmp_path):
    before = time.time()
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(10, {"loss": 2.5, "loss/contrastive": np.float32(1.25), "accuracy/i2t": jnp.float32(0.5)})
        writer.write_scalars(3_000_000_000, {"loss": float("nan"), "grad_norm": 1e40})
    (path,) = (tmp_path / "tensorboard").iterdir()
    assert re.fullmatch(rf"events\.out\.tfevents\.\d+\.{re.escape(socket.gethostname())}", path.name)
    assert before - 1 <= int(path.name.split(".")[3]) <= time.time()

    events = [decode_event(record) for record in read_tfrecords(path)]
    assert len(events) == 3
    assert events[0]["file_version"] == "brain.Event:2" and not events[0]["values"]
    assert all(before - 1 <= e["wall_time"] <= time.time() + 1 for e in events)
    assert events[1]["step"] == 10
    # Exact: every value chosen is representable in float32, TensorBoard's simple_value type.
    assert events[1]["values"] == {"loss": 2.5, "loss/contrastive": 1.25, "accuracy/i2t": 0.5}
    assert events[2]["step"] == 3_000_000_000  # past int32: step is an int64 varint
    assert math.isnan(events[2]["values"]["loss"])
    assert events[2]["values"]["grad_norm"] == math.inf  # beyond float32's range


def test_jsonl_round_trip_with_nonfinite_values(tmp_path):
    scalars = {"loss": np.float32(0.75), "steps_skipped": np.int64(3), "lr": jnp.float32(1e-3),
               "a": float("nan"), "b": float("inf"), "c": -np.inf}
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(np.int32(5), scalars)
        writer.write_scalars(6, {"loss": 0.5})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # Strict JSON: NaN/Infinity tokens would make most non-Python readers fail.
    raw = [json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}")) for line in lines]
    assert raw[0]["a"] == "nan" and raw[0]["b"] == "inf" and raw[0]["c"] == "-inf"
    assert isinstance(raw[0]["step"], int) and isinstance(raw[0]["time"], float)

    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [5, 6]
    assert rows[0]["loss"] == 0.75 and rows[0]["steps_skipped"] == 3.0
    assert rows[0]["lr"] == pytest.approx(1e-3, rel=1e-7)  # float32 -> float64
    assert math.isnan(rows[0]["a"]) and rows[0]["b"] == math.inf and rows[0]["c"] == -math.inf
    assert set(rows[1]) == {"step", "time", "loss"}


def test_resumed_writer_appends(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(2, {"loss": 0.5})
    assert [row["loss"] for row in read_metrics_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 0.5]


def test_truncated_last_line_is_dropped_but_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    assert read_metrics_jsonl(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_metrics_jsonl(path)


def test_non_primary_process_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with MetricsWriter(workdir, process_index=1) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.flush()
    assert not workdir.exists()


def test_non_scalar_metric_is_named_in_the_error(tmp_path):
    with MetricsWriter(tmp_path) as writer, pytest.raises(TypeError, match="'embeds'"):
        writer.write_scalars(1, {"embeds": np.zeros(3)})
