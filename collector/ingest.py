"""Turning a batch of message payloads into one Arrow table for the store, and the rest into
dead letters with their reasons.

Two paths give the same table. The fast one hands the whole batch to Arrow's JSON reader (C++,
no Python object per record), then checks what that reader does not: required fields, Literal
values, no JSON null, valid UTF-8, one object per message. Anything it cannot vouch for sends
the batch down the exact path: each record decoded by msgspec against the contract, so a bad
record is named and dead-lettered while the rest are stored. A test feeds both paths the same
payloads, odd ones included, and requires the fast one to decline or to agree exactly.
"""

from __future__ import annotations

from typing import Final

import msgspec
import msgspec.inspect as mi
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from collector.columns import (
    RECORD_COLUMNS,
    RECORD_SCHEMA,
    SCHEMA,
    derived,
    reject_reason,
    to_arrow,
)
from collector.record import Decision, UsageRecord, record_decoder


class Prepared(msgspec.Struct, frozen=True):
    table: pa.Table
    dead: list[tuple[int, str]]  # (index into the batch, reason), in batch order


def _decision_outcomes() -> pa.Array:
    info = mi.type_info(Decision)
    assert isinstance(info, mi.StructType)
    (outcome,) = (f.type for f in info.fields if f.name == "outcome")
    assert isinstance(outcome, mi.LiteralType)
    return pa.array(sorted(str(v) for v in outcome.values))


_PARSE: Final = pj.ParseOptions(
    explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore", newlines_in_values=True
)
_CHOICES: Final = {c.name: pa.array(c.choices) for c in RECORD_COLUMNS if c.choices}
_DECISION_OUTCOMES: Final = _decision_outcomes()
_TS_MS: Final = next(i for i, c in enumerate(RECORD_COLUMNS) if c.name == "ts_ms")
_LATENCY: Final = next(i for i, c in enumerate(RECORD_COLUMNS) if c.name == "latency_ms")


def _fill(column: pa.Array, default: object, arrow_type: pa.DataType) -> pa.Array:
    if isinstance(arrow_type, pa.ListType):
        # fill_null on a list of structs copies element by element; rebuilding the offsets
        # with empty lists in the null slots is two vector operations.
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(column), type=arrow_type)
    return pc.fill_null(column, pa.scalar(default, type=arrow_type))


def _all_in(column: pa.Array, allowed: pa.Array) -> bool:
    """Every non-null value is one of `allowed`."""
    hits = pc.sum(pc.is_in(column, value_set=allowed)).as_py() or 0
    return bool(hits + column.null_count == len(column))


def _decisions_ok(column: pa.Array) -> bool:
    items = pc.list_flatten(column)
    if len(items) == 0:
        return True
    if items.null_count:
        return False
    fields = [items.field(i) for i in range(items.type.num_fields)]
    if any(f.null_count for f in fields):
        return False  # every Decision field is required
    return _all_in(items.field("outcome"), _DECISION_OUTCOMES)


def _plain_batch(payloads: list[bytes], joined: bytes) -> bool:
    """True when every payload opens a JSON object, none holds a JSON null (the contract's
    encoder never writes one; Arrow would read it as absent) and all is valid UTF-8.

    Since each payload starts an object, each yields at least one row or a parse error, so a
    row count equal to the payload count means exactly one object per payload.
    """
    return (
        all(p[:1] == b"{" for p in payloads)
        and b"null" not in joined
        and (joined.isascii() or _utf8(joined))
    )


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def fast_table(payloads: list[bytes]) -> pa.Table | None:
    """The batch's table through Arrow's JSON reader, or None when it cannot vouch for it."""
    if not payloads:
        return SCHEMA.empty_table()
    joined = b"\n".join(payloads)
    if not _plain_batch(payloads, joined):
        return None
    try:
        parsed = pj.read_json(
            pa.BufferReader(joined),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(joined) + 1),
            parse_options=_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if parsed.num_rows != len(payloads):
        return None
    arrays: list[pa.Array] = []
    for column, chunked in zip(RECORD_COLUMNS, parsed.columns, strict=True):
        values = chunked.combine_chunks()
        if column.required:
            if values.null_count:
                return None
        elif not column.nullable and values.null_count:
            values = _fill(values, column.default, column.arrow_type)
        allowed = _CHOICES.get(column.name)
        if allowed is not None and not _all_in(values, allowed):
            return None
        arrays.append(values)
    ids = arrays[0]
    if len(ids) and pc.min(pc.binary_length(ids)).as_py() == 0:
        return None  # an empty id is no id
    decisions = parsed.schema.get_field_index("decisions")
    if not _decisions_ok(arrays[decisions]):
        return None
    try:
        arrays += derived(arrays[_TS_MS], arrays[_LATENCY])
    except pa.ArrowInvalid:
        return None  # a latency the slow path will name as unstorable
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _decode(data: bytes) -> UsageRecord | str:
    try:
        record = record_decoder.decode(data)
    # ValidationError is a DecodeError; invalid UTF-8 in a string raises UnicodeDecodeError.
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return f"undecodable: {exc}"
    if not record.id:
        return "invalid: empty id"
    return record


def exact_prepare(payloads: list[bytes]) -> Prepared:
    """Each payload decoded against the contract; the bad ones named, the rest converted."""
    records: list[UsageRecord] = []
    kept: list[int] = []
    dead: list[tuple[int, str]] = []
    for i, data in enumerate(payloads):
        result = _decode(data)
        if isinstance(result, str):
            dead.append((i, result))
        else:
            records.append(result)
            kept.append(i)
    try:
        table = to_arrow(records)
    except (pa.ArrowException, ArithmeticError, TypeError, ValueError):
        # Some record holds a value the table cannot (a non-finite or oversized cost, an int
        # beyond 64 bits): find which, one by one, only on this rare path.
        good: list[UsageRecord] = []
        for i, record in zip(kept, records, strict=True):
            reason = reject_reason(record)
            if reason is None:
                good.append(record)
            else:
                dead.append((i, f"unstorable: {reason}"))
        table = to_arrow(good)
    return Prepared(table, sorted(dead))


def prepare(payloads: list[bytes], *, min_ts_ms: int = 0) -> Prepared:
    """Decode a batch for the store; CPU-bound, so callers run it off the event loop.

    Records older than `min_ts_ms` were already rolled up and deleted from the raw table (see
    retention.py); storing one again could count it twice, so it is dead-lettered instead.
    """
    table = fast_table(payloads)
    if table is not None:
        prepared = Prepared(table, [])
        kept = list(range(len(payloads)))
    else:
        prepared = exact_prepare(payloads)
        gone = {i for i, _ in prepared.dead}
        kept = [i for i in range(len(payloads)) if i not in gone]
    if min_ts_ms <= 0 or prepared.table.num_rows == 0:
        return prepared
    old = pc.less(prepared.table.column("ts_ms"), min_ts_ms)
    if not pc.any(old).as_py():
        return prepared
    flags = old.to_pylist()
    reason = f"expired: older than the raw retention (ts_ms < {min_ts_ms})"
    dead = prepared.dead + [(kept[row], reason) for row, is_old in enumerate(flags) if is_old]
    return Prepared(prepared.table.filter(pc.invert(old)), sorted(dead))
