"""The usage_records columns, derived from the UsageRecord contract, and its columnar encoder.

The table follows the contract field by field, so a field added to `collector/record.py`
becomes a column without a hand-kept list drifting out of step. Each column knows its DuckDB
type, its Arrow type, its default and (for Literal fields) its allowed values; `to_arrow` turns
a batch of records into one Arrow table that DuckDB ingests in a single statement. Two columns
are derived rather than sent: `ts` (ts_ms as a timestamp) and `end_ms` (when the request
finished, the order records arrive in, which the store's dedup uses to stay narrow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
import pyarrow as pa
import pyarrow.compute as pc

from collector.record import Decision, UsageRecord

# 38 digits, 12 after the point: a millionth of a millionth of a dollar is far below any price
# per token, and 26 integer digits hold any total. Exact, unlike DOUBLE, so sums reconcile.
COST_PRECISION: Final = 38
COST_SCALE: Final = 12
_COST_QUANTUM: Final = Decimal(1).scaleb(-COST_SCALE)

Convert = Callable[[Sequence[Any]], pa.Array]


class Column(msgspec.Struct, frozen=True):
    """One column of usage_records: its SQL and Arrow types, default and batch converter."""

    name: str
    sql_type: str
    arrow_type: pa.DataType
    nullable: bool
    default_sql: str | None  # a SQL literal, so a column added later back-fills old rows
    convert: Convert | None  # None: derived in `to_arrow`, not read from the record
    default: Any = None  # the contract's default as a Python value (None: none, or None)
    required: bool = False  # no default: a record without it is not a record
    choices: tuple[str, ...] = ()  # a Literal field's allowed values

    def ddl(self, *, constraints: bool = True) -> str:
        """The column's definition; ALTER TABLE ADD COLUMN takes no NOT NULL, hence the switch."""
        text = f'"{self.name}" {self.sql_type}'
        if constraints and not self.nullable:
            text += " NOT NULL"
        if self.default_sql is not None:
            text += f" DEFAULT {self.default_sql}"
        return text


def _plain(arrow_type: pa.DataType) -> Convert:
    def convert(values: Sequence[Any]) -> pa.Array:
        return pa.array(values, type=arrow_type)

    return convert


_COST_TYPE: Final = pa.decimal128(COST_PRECISION, COST_SCALE)


def _convert_cost(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=_COST_TYPE)
    except pa.ArrowInvalid:
        # Only when some value has more than 12 decimals (or is not finite): round those half to
        # even and retry, so the common batch pays for no per-value check.
        return pa.array([_quantize_cost(v) for v in values], type=_COST_TYPE)


def _quantize_cost(value: Decimal | None) -> Decimal | None:
    if value is None or not value.is_finite():
        return value  # a non-finite cost stays invalid and fails the retry
    try:
        return value.quantize(_COST_QUANTUM)
    except InvalidOperation:
        return value  # too many digits for the column: fails the retry with Arrow's message


_DECISION_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(Decision))
_DECISION_TYPE: Final = pa.list_(pa.struct([(name, pa.string()) for name in _DECISION_FIELDS]))
_DECISION_SQL: Final = (
    "STRUCT(" + ", ".join(f'"{name}" VARCHAR' for name in _DECISION_FIELDS) + ")[]"
)


def _convert_decisions(values: Sequence[Any]) -> pa.Array:
    # Almost every record has no decisions; share one empty list instead of building many.
    empty: list[tuple[str, ...]] = []
    rows = [[msgspec.structs.astuple(d) for d in ds] if ds else empty for ds in values]
    return pa.array(rows, type=_DECISION_TYPE)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for default {value!r}")


def _scalar(t: mi.Type) -> tuple[str, pa.DataType, Convert] | None:
    if isinstance(t, mi.StrType):
        return "VARCHAR", pa.string(), _plain(pa.string())
    if isinstance(t, mi.LiteralType) and all(isinstance(v, str) for v in t.values):
        return "VARCHAR", pa.string(), _plain(pa.string())
    if isinstance(t, mi.BoolType):
        return "BOOLEAN", pa.bool_(), _plain(pa.bool_())
    if isinstance(t, mi.IntType):
        return "BIGINT", pa.int64(), _plain(pa.int64())
    if isinstance(t, mi.FloatType):
        return "DOUBLE", pa.float64(), _plain(pa.float64())
    if isinstance(t, mi.DecimalType):
        return f"DECIMAL({COST_PRECISION}, {COST_SCALE})", _COST_TYPE, _convert_cost
    if isinstance(t, mi.ListType) and getattr(t.item_type, "cls", None) is Decision:
        return _DECISION_SQL, _DECISION_TYPE, _convert_decisions
    return None


def _column(field: mi.Field) -> Column:
    t, nullable = field.type, False
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(rest) != 1 or len(rest) == len(t.types):
            raise TypeError(f"usage record field {field.name}: unsupported union {t}")
        t, nullable = rest[0], True
    found = _scalar(t)
    if found is None:
        # A contract change the store cannot map must fail in tests, not at 3 a.m.
        raise TypeError(f"usage record field {field.name}: no column type for {t}")
    sql_type, arrow_type, convert = found
    default: Any = None
    if field.default_factory is not msgspec.NODEFAULT:
        default = field.default_factory()
        default_sql = f"[]::{sql_type}" if isinstance(t, mi.ListType) else None
    elif field.default is msgspec.NODEFAULT:
        default_sql = None  # required on the wire, so no default in the table either
    else:
        default = field.default
        default_sql = _sql_literal(field.default)
    choices = tuple(str(v) for v in t.values) if isinstance(t, mi.LiteralType) else ()
    return Column(
        field.name,
        sql_type,
        arrow_type,
        nullable,
        default_sql,
        convert,
        default=default,
        required=field.required,
        choices=choices,
    )


def _record_columns() -> tuple[Column, ...]:
    info = mi.type_info(UsageRecord)
    if not isinstance(info, mi.StructType):
        raise TypeError("UsageRecord is not a msgspec Struct")
    return tuple(_column(f) for f in info.fields)


RECORD_COLUMNS: Final = _record_columns()
"""One column per contract field, in contract order."""

# `ts` sits beside `ts_ms` for people who query with SQL time functions; reports use ts_ms.
TS_COLUMN: Final = Column(
    name="ts",
    sql_type="TIMESTAMPTZ",
    arrow_type=pa.timestamp("ms", tz="UTC"),
    nullable=False,
    default_sql="'epoch'::TIMESTAMPTZ",
    convert=None,
)
# When the request finished: ts_ms + latency_ms rounded up. Records reach the collector in
# about this order (a record is sent when its request ends), so a batch's end_ms values sit in
# a narrow range even when some requests streamed for minutes; see store.py's dedup.
END_COLUMN: Final = Column(
    name="end_ms",
    sql_type="BIGINT",
    arrow_type=pa.int64(),
    nullable=False,
    default_sql="0",
    convert=None,
)
ALL_COLUMNS: Final[tuple[Column, ...]] = (*RECORD_COLUMNS, TS_COLUMN, END_COLUMN)
DECISION_TYPE: Final = _DECISION_TYPE

_CONVERTERS: Final = tuple(c.convert for c in RECORD_COLUMNS if c.convert is not None)
_TS_MS_INDEX: Final = next(i for i, c in enumerate(RECORD_COLUMNS) if c.name == "ts_ms")
_LATENCY_INDEX: Final = next(i for i, c in enumerate(RECORD_COLUMNS) if c.name == "latency_ms")
SCHEMA: Final = pa.schema([pa.field(c.name, c.arrow_type, c.nullable) for c in ALL_COLUMNS])
RECORD_SCHEMA: Final = pa.schema([pa.field(c.name, c.arrow_type) for c in RECORD_COLUMNS])
"""The record part alone, every field nullable: what a JSON reader fills before defaults."""


def derived(ts_ms: pa.Array, latency_ms: pa.Array) -> list[pa.Array]:
    """The `ts` and `end_ms` arrays; raises pyarrow errors for values out of range."""
    latency = pc.cast(pc.ceil(latency_ms), pa.int64())  # a safe cast: inf or NaN raise
    return [ts_ms.cast(TS_COLUMN.arrow_type), pc.add_checked(ts_ms, latency)]


def to_arrow(records: Sequence[UsageRecord]) -> pa.Table:
    """One Arrow table for a batch; raises pyarrow/decimal errors for values the table cannot
    hold (find the culprits with `reject_reason`)."""
    if not records:
        return SCHEMA.empty_table()
    # astuple and zip run in C: one pass to rows, one transpose to columns.
    by_column = list(zip(*map(msgspec.structs.astuple, records), strict=True))
    arrays = [convert(values) for convert, values in zip(_CONVERTERS, by_column, strict=True)]
    arrays += derived(arrays[_TS_MS_INDEX], arrays[_LATENCY_INDEX])
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def reject_reason(record: UsageRecord) -> str | None:
    """Why this one record cannot be stored, or None when it can."""
    try:
        to_arrow([record])
    except (pa.ArrowException, ArithmeticError, TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
