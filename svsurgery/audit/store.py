"""Shards and the files an audit keeps: deterministic sharding, finished shards on disk for
resuming, and the rows as JSONL and Parquet.

**Sharding.** Entries keep the corpus's order; shard k holds entries [k·S, (k+1)·S) for the
shard size S. Every engine runs the same shards, so a row depends only on its entry.

**Resuming.** A finished shard is written atomically to ``OUT/shards/shard-NNNNN.jsonl``: a
header line with its fingerprint (sha256 of what the audit compares — model and reference
hashes, front-end and VAD settings, runtime setting, row format — and of its entries' paths,
sizes and modification times), then its rows. On a rerun a shard whose file is complete and
whose fingerprint matches is read back instead of computed; anything else is computed again.
An interrupted audit (Ctrl-C, SIGTERM, SIGKILL, a lost Ray node) therefore resumes where it
stopped, and a changed model or corpus file is never mixed with old rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

from svsurgery.audit.corpus import Entry, stamp
from svsurgery.audit.metrics import COLUMNS, comparable
from svsurgery.files import write_atomically, write_text_atomically

__all__ = ["Shard", "ShardStore", "dump_row", "rows_digest", "shards_of", "write_jsonl", "write_parquet"]


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    entries: tuple[Entry, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.jsonl"


def shards_of(entries: list[Entry], size: int, audit_fingerprint: str) -> list[Shard]:
    shards = []
    for k, first in enumerate(range(0, len(entries), size)):
        members = tuple(entries[first : first + size])
        listing = json.dumps([stamp(e) for e in members], sort_keys=True)
        fingerprint = hashlib.sha256(f"{audit_fingerprint}\n{listing}".encode()).hexdigest()
        shards.append(Shard(k, members, fingerprint))
    return shards


def _plain(value):
    """Strict JSON values: non-finite floats become null (the figure is missing, not a string)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _plain(value.item())
    return value


def dump_row(row: dict) -> str:
    """One row as one JSON line, columns in :data:`COLUMNS` order (the same bytes on every engine)."""
    return json.dumps(
        {k: _plain(row.get(k)) for k in COLUMNS}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def dump_rows(rows: list[dict]) -> str:
    return "\n".join(dump_row(r) for r in rows)


def rows_digest(rows: list[dict]) -> str:
    """sha256 of the rows without their timing columns: equal for two runs that computed the same."""
    text = "\n".join(
        json.dumps(comparable(json.loads(dump_row(r))), separators=(",", ":"), ensure_ascii=False) for r in rows
    )
    return hashlib.sha256(text.encode()).hexdigest()


class ShardStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def load(self, shard: Shard) -> list[dict] | None:
        """The shard's rows when a complete file with the same fingerprint is there, else None."""
        path = self.folder / shard.name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
            rows = [json.loads(line) for line in lines[1:]]
        except (OSError, IndexError, ValueError):
            return None
        if (
            header.get("fingerprint") != shard.fingerprint
            or header.get("rows") != len(shard.entries)
            or len(rows) != len(shard.entries)
        ):
            return None
        if [r.get("index") for r in rows] != [e.index for e in shard.entries]:
            return None
        return rows

    def save(self, shard: Shard, rows: list[dict]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        header = json.dumps(
            {"shard": shard.index, "fingerprint": shard.fingerprint, "rows": len(rows)}, separators=(",", ":")
        )
        return write_text_atomically(self.folder / shard.name, header + ("\n" + dump_rows(rows) if rows else ""))

    def save_text(self, shard: Shard, rows_text: str, count: int) -> Path:
        """A shard whose rows come serialized (by a Ray actor, with :func:`dump_rows`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        header = json.dumps(
            {"shard": shard.index, "fingerprint": shard.fingerprint, "rows": count}, separators=(",", ":")
        )
        return write_text_atomically(self.folder / shard.name, header + ("\n" + rows_text if count else ""))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_text_atomically(path, dump_rows(rows))


def arrow_schema():
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "list<int64>": pa.list_(pa.int64()),
        "list<float64>": pa.list_(pa.float64()),
        "list<list<int64>>": pa.list_(pa.list_(pa.int64())),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()])


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """The rows as a Parquet table with a fixed schema (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = [json.loads(dump_row(r)) for r in rows]
    table = pa.Table.from_pylist(plain, schema=arrow_schema())
    return write_atomically(path, lambda staged: pq.write_table(table, str(staged)))
