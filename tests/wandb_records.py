"""Read a W&B offline run file (``run-*.wandb``): what the run recorded, without the service.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records,
each with a 7-byte header: checksum, length, type) of ``wandb_internal_pb2.Record`` messages.
"""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path, finished: bool = True, wait_s: float = 60.0) -> list:
    """The file's records; for a ``finished`` run, once the file holds its exit record: W&B's
    service (wandb-core, a process of its own) may still be writing the file when the run's
    process has finished it, for longer on a busy machine; a test that read it then saw part of
    the run. A killed run's file never gets one."""
    deadline = time.monotonic() + wait_s
    while True:
        found = list(_parse(path.read_bytes()))
        if not finished or any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _parse(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 or pos + HEADER + length > len(data):  # the end, or a record still being written
            break
        parts.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def config_and_history(path: Path, finished: bool = True) -> tuple[dict, list[dict]]:
    config, history = {}, []
    for r in records(path, finished):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return config, history


def summary(path: Path) -> dict:
    """The run's summary as it stood at the end: each key's last value."""
    values = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            values.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return values


def run_record(path: Path):
    """The run's own record: its name (display_name), group (run_group), tags, id."""
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")
