"""A deterministic, scalable totesys: ``generate(con, scale, seed)`` fills an empty database
with about ``scale`` sales orders and proportional purchase orders, transactions, payments and
designs, shaped like the real 2024-11-15 snapshot so the pipeline is benchmarked and tested
on realistic data rather than on uniform noise.

The shape it copies from the snapshot (see its README and ``totesys-source.md``):
- orders are created on weekdays between 08:00 and 19:00, about 21 sales a day (beyond ten
  years of history the daily rate grows instead, so large scales keep a bounded calendar);
  purchase orders are 4,649 per 11,187 sales, designs 473 per 11,187 sales;
- an order, its transaction and its payment share one ``created_at`` (cross-table ties), and
  about 5% of orders share their timestamp with the previous order (ties within a table);
  the small tables share one stamp, as in the real data;
- units_sold 1,000..100,000, unit_price 2.00..4.00, item_quantity 1..999, item prices up to
  1,000.00; payment amount = quantity x price, in the order's currency, for the order's
  counterparty, payable on the order's agreed payment date;
- about 61% of payments are later flipped to paid, 12 hours to 6 days after creation
  (``last_updated > created_at``); the rest stay unpaid;
- address_line_2 is null in about two thirds of addresses, district in about half.

Everything comes from numpy generators seeded with ``(seed, part)``, so the same seed gives
the same database, byte for byte. Rows reach PostgreSQL through Arrow CSV and ``COPY FROM
STDIN`` in bounded chunks, with keys and foreign keys added after the load (one sort per
index, one set-based validation per foreign key); there is no per-row Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pg8000.exceptions import DatabaseError

from totes.errors import ConfigurationError, TotesError
from totes.identifiers import quote
from totes.observability import logger
from totes.source.model import TABLES, TABLES_BY_NAME
from totes_tools.source.ddl import (
    constraint_statements,
    ensure_empty,
    reset_sequences,
    run_statements,
    schema_statements,
)
from totes_tools.source.snapshot import copy_table

SALES_PER_WEEKDAY = 21
PURCHASES_PER_SALE = 4_649 / 11_187
DESIGNS_PER_SALE = 473 / 11_187
INITIAL_DESIGN_SHARE = 0.02
PAID_SHARE = 0.61
TIE_SHARE = 0.05
OPEN_HOUR, CLOSE_HOUR = 8, 19
MAX_HISTORY_WEEKDAYS = 2_610  # ten years
HISTORY_END = np.datetime64("2024-11-15")  # a Friday, as the snapshot
CHUNK_ROWS = 200_000

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
OPEN_MS = (CLOSE_HOUR - OPEN_HOUR) * MS_PER_HOUR

_UPPER_DIGITS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
_LOWER_DIGITS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)

FIRST_NAMES = [
    "Jeremie", "Deron", "Jeanette", "Ana", "Magdalena", "Korey", "Raphael", "Oswaldo", "Brody",
    "Jazmyn", "Meda", "Imani", "Stan", "Rigoberto", "Tom", "Pierce", "Flavio", "Nelson",
    "Melba", "Jane", "Myra", "Micheal", "Lucy", "Dolly", "Yolanda", "Marshall",
]  # fmt: skip
LAST_NAMES = [
    "Franey", "Beier", "Erdman", "Glover", "Zieme", "Reichert", "Rippin", "Bergstrom", "Ratke",
    "Kuphal", "Cremin", "Walsh", "Lehner", "Hodkiewicz", "Wiza", "Kovacek", "Toy", "Sanford",
    "Hane", "Fahey", "Leannon", "Predovic", "Morar", "Armstrong", "Kohler", "Bashirian",
]  # fmt: skip
STREET_SUFFIXES = ["Via", "Cliffs", "Fort", "Freeway", "Lane", "Street", "Road", "Parkway"]
CITIES = [
    "New Patienceburgh", "Aliso Viejo", "Lake Charles", "Olsonside", "Fort Shadburgh",
    "Kendraburgh", "Suffolk", "East Bobbie", "Pricetown", "Hackensack", "Derby", "Oakland",
]  # fmt: skip
DISTRICTS = ["Avon", "Bedfordshire", "Buckinghamshire", "Cambridgeshire", "Cheshire", "Surrey"]
COUNTRIES = [
    "Turkey", "San Marino", "Samoa", "Democratic People's Republic of Korea", "Iraq",
    "United Kingdom", "Germany", "Austria", "Portugal", "Chile", "Japan", "Canada",
]  # fmt: skip
COMPANY_FORMS = [" and Sons", " Inc", " LLC", " Group", " - Hoppe", ", Kohler and Morar"]
DEPARTMENTS = [
    ("Sales", "Manchester"), ("Purchasing", "Manchester"), ("Production", "Leeds"),
    ("Dispatch", "Leds"), ("Finance", "Manchester"), ("Facilities", "Manchester"),
    ("Communications", "Leeds"), ("HR", "Leeds"),
]  # fmt: skip
CURRENCIES = ["GBP", "USD", "EUR"]
PAYMENT_TYPES = ["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"]
DESIGN_NAMES = [
    "Steel", "Soft", "Granite", "Concrete", "Frozen", "Wooden", "Bronze", "Plastic", "Cotton",
    "Rubber", "Fresh", "Metal",
]  # fmt: skip
FILE_LOCATIONS = [
    "/usr", "/private", "/lost+found", "/System", "/usr/ports", "/usr/share", "/etc/periodic",
    "/usr/X11R6", "/Users", "/net", "/usr/libexec", "/etc", "/usr/local/src", "/opt/lib",
    "/selinux", "/home/user/dir",
]  # fmt: skip


@dataclass(frozen=True)
class Calendar:
    """The working days of the generated history and the stamp of the initial rows."""

    days: np.ndarray  # datetime64[D] weekdays, ascending, ending at HISTORY_END
    initial_ms: int  # epoch ms of the small tables' shared created_at

    @classmethod
    def for_scale(cls, scale: int) -> Calendar:
        weekdays = min(max(1, math.ceil(scale / SALES_PER_WEEKDAY)), MAX_HISTORY_WEEKDAYS)
        days = np.busday_offset(HISTORY_END, -np.arange(weekdays)[::-1], roll="backward")
        first_ms = int(days[0].astype("datetime64[ms]").astype(np.int64))
        return cls(days, first_ms - MS_PER_DAY + 14 * MS_PER_HOUR + 1_249_962)

    @property
    def end_ms(self) -> int:
        return int(self.days[-1].astype("datetime64[ms]").astype(np.int64)) + MS_PER_DAY

    def working_stamps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` sorted epoch-ms stamps on weekdays 08:00..19:00, about TIE_SHARE of them
        repeating the previous stamp."""
        offsets = np.sort(rng.integers(0, len(self.days) * OPEN_MS, size=n, dtype=np.int64))
        day_ms = self.days.astype("datetime64[ms]").astype(np.int64)
        stamps = day_ms[offsets // OPEN_MS] + OPEN_HOUR * MS_PER_HOUR + offsets % OPEN_MS
        return with_ties(rng, stamps)


def with_ties(rng: np.random.Generator, stamps: np.ndarray) -> np.ndarray:
    """Make about TIE_SHARE of a sorted stamp array repeat the stamp before it."""
    index = np.arange(len(stamps))
    index[(rng.random(len(stamps)) < TIE_SHARE) & (index > 0)] = 0
    return stamps[np.maximum.accumulate(index)]


def _rng(seed: int, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, *part.encode()])


def _pick(rng: np.random.Generator, words: list[str], n: int) -> pa.Array:
    return pa.array(np.asarray(words, dtype=object)[rng.integers(0, len(words), n)], pa.string())


def _words(words: list[str], index: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(words, dtype=object)[index], pa.string())


def _letters(rng: np.random.Generator, n: int, width: int, alphabet: np.ndarray) -> np.ndarray:
    """An (n, width) byte matrix of random characters from ``alphabet``."""
    return alphabet[rng.integers(0, len(alphabet), size=(n, width))]


def _codes(letters: np.ndarray) -> pa.Array:
    """One string per row of a byte matrix (a view, no per-row Python)."""
    width = letters.shape[1]
    return pa.array(np.ascontiguousarray(letters).view(f"S{width}").ravel()).cast(pa.string())


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _digits(rng: np.random.Generator, n: int, low: int, high: int) -> pa.Array:
    return pc.cast(pa.array(rng.integers(low, high, n)), pa.string())


def _stamps(ms: np.ndarray) -> pa.Array:
    return pa.array(ms.astype("datetime64[ms]"), pa.timestamp("ms"))


def _money(cents: np.ndarray) -> pa.Array:
    """Exact numeric(10,2) from integer cents: decimal128 stores the unscaled integer, so the
    cents become its 16-byte little-endian value directly (no float on the way)."""
    unscaled = np.empty((len(cents), 2), dtype=np.int64)
    unscaled[:, 0] = cents
    unscaled[:, 1] = np.where(cents < 0, -1, 0)
    return pa.Array.from_buffers(
        pa.decimal128(10, 2), len(cents), [None, pa.py_buffer(unscaled.tobytes())]
    )


def _dates(epoch_ms: np.ndarray, days_after: np.ndarray) -> pa.Array:
    """Text dates YYYY-MM-DD: the creation day plus ``days_after``."""
    day = epoch_ms.astype("datetime64[ms]").astype("datetime64[D]") + days_after
    return pa.array(np.datetime_as_string(day, unit="D"), pa.string())


def _table(name: str, columns: dict[str, pa.Array]) -> pa.Table:
    schema = TABLES_BY_NAME[name].arrow_schema
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def _ids(n: int, start: int = 1) -> pa.Array:
    return pa.array(np.arange(start, start + n, dtype=np.int32))


def _const_stamps(ms: int, n: int) -> pa.Array:
    return _stamps(np.full(n, ms, dtype=np.int64))


def small_tables(seed: int, calendar: Calendar) -> dict[str, pa.Table]:
    """The reference tables, fixed in size as in the real business."""
    rng = _rng(seed, "small")
    stamp = calendar.initial_ms
    n_addr, n_cp, n_staff = 30, 20, 20
    line_2 = _join(
        _pick(rng, LAST_NAMES, n_addr),
        pa.array([" "] * n_addr),
        _pick(rng, STREET_SUFFIXES, n_addr),
    )
    address = {
        "address_id": _ids(n_addr),
        "address_line_1": _join(
            _digits(rng, n_addr, 1, 9999),
            pa.array([" "] * n_addr),
            _pick(rng, LAST_NAMES, n_addr),
            pa.array([" "] * n_addr),
            _pick(rng, STREET_SUFFIXES, n_addr),
        ),
        "address_line_2": pc.if_else(pa.array(rng.random(n_addr) < 2 / 3), None, line_2),
        "district": pc.if_else(
            pa.array(rng.random(n_addr) < 0.47), None, _pick(rng, DISTRICTS, n_addr)
        ),
        "city": _pick(rng, CITIES, n_addr),
        "postal_code": _digits(rng, n_addr, 10_000, 99_999),
        "country": _pick(rng, COUNTRIES, n_addr),
        "phone": _join(
            _digits(rng, n_addr, 1000, 9999),
            pa.array([" "] * n_addr),
            _digits(rng, n_addr, 100_000, 999_999),
        ),
    }
    counterparty = {
        "counterparty_id": _ids(n_cp),
        "counterparty_legal_name": _join(
            _pick(rng, LAST_NAMES, n_cp), _pick(rng, COMPANY_FORMS, n_cp)
        ),
        "legal_address_id": pa.array(rng.integers(1, n_addr + 1, n_cp)),
        "commercial_contact": _join(
            _pick(rng, FIRST_NAMES, n_cp), pa.array([" "] * n_cp), _pick(rng, LAST_NAMES, n_cp)
        ),
        "delivery_contact": _join(
            _pick(rng, FIRST_NAMES, n_cp), pa.array([" "] * n_cp), _pick(rng, LAST_NAMES, n_cp)
        ),
    }
    n_dep = len(DEPARTMENTS)
    department = {
        "department_id": _ids(n_dep),
        "department_name": pa.array([d for d, _ in DEPARTMENTS]),
        "location": pa.array([loc for _, loc in DEPARTMENTS]),
        "manager": _join(
            _pick(rng, FIRST_NAMES, n_dep), pa.array([" "] * n_dep), _pick(rng, LAST_NAMES, n_dep)
        ),
    }
    first, last = _pick(rng, FIRST_NAMES, n_staff), _pick(rng, LAST_NAMES, n_staff)
    staff = {
        "staff_id": _ids(n_staff),
        "first_name": first,
        "last_name": last,
        "department_id": pa.array(rng.integers(1, n_dep + 1, n_staff)),
        "email_address": pc.utf8_lower(
            _join(
                first, pa.array(["."] * n_staff), last, pa.array(["@terrifictotes.com"] * n_staff)
            )
        ),
    }
    currency = {"currency_id": _ids(3), "currency_code": pa.array(CURRENCIES)}
    payment_type = {"payment_type_id": _ids(4), "payment_type_name": pa.array(PAYMENT_TYPES)}
    tables = {
        "address": address,
        "counterparty": counterparty,
        "currency": currency,
        "department": department,
        "staff": staff,
        "payment_type": payment_type,
    }
    out = {}
    for name, columns in tables.items():
        n = len(next(iter(columns.values())))
        columns["created_at"] = columns["last_updated"] = _const_stamps(stamp, n)
        out[name] = _table(name, columns)
    return out


@dataclass(frozen=True)
class Orders:
    """One kind of order (sales or purchase) as column arrays, in id order (= time order)."""

    created: np.ndarray  # epoch ms
    counterparty: np.ndarray
    currency: np.ndarray
    location: np.ndarray
    staff: np.ndarray
    quantity: np.ndarray
    price_cents: np.ndarray
    delivery_days: np.ndarray
    payment_days: np.ndarray

    @classmethod
    def draw(cls, rng, calendar: Calendar, n: int, quantity: tuple, price_cents: tuple) -> Orders:
        return cls(
            created=calendar.working_stamps(rng, n),
            counterparty=rng.integers(1, 21, n, dtype=np.int32),
            currency=rng.integers(1, 4, n, dtype=np.int32),
            location=rng.integers(1, 31, n, dtype=np.int32),
            staff=rng.integers(1, 21, n, dtype=np.int32),
            quantity=rng.integers(quantity[0], quantity[1] + 1, n, dtype=np.int32),
            price_cents=rng.integers(price_cents[0], price_cents[1] + 1, n, dtype=np.int32),
            delivery_days=rng.integers(0, 8, n, dtype=np.int16),
            payment_days=rng.integers(0, 7, n, dtype=np.int16),
        )

    def __len__(self) -> int:
        return len(self.created)

    def common_columns(self, lo: int, hi: int) -> dict[str, pa.Array]:
        created = self.created[lo:hi]
        return {
            "staff_id": pa.array(self.staff[lo:hi]),
            "counterparty_id": pa.array(self.counterparty[lo:hi]),
            "currency_id": pa.array(self.currency[lo:hi]),
            "agreed_delivery_date": _dates(created, self.delivery_days[lo:hi]),
            "agreed_payment_date": _dates(created, self.payment_days[lo:hi]),
            "agreed_delivery_location_id": pa.array(self.location[lo:hi]),
            "created_at": _stamps(created),
            "last_updated": _stamps(created),
        }


@dataclass(frozen=True)
class Plan:
    """Everything ``generate`` writes, derived from (scale, seed) alone."""

    scale: int
    seed: int
    chunk_rows: int = CHUNK_ROWS

    def __post_init__(self):
        if self.scale < 1:
            raise ConfigurationError(
                f"scale must be a positive number of sales orders, got {self.scale}"
            )

    @property
    def calendar(self) -> Calendar:
        return Calendar.for_scale(self.scale)

    def tables(self) -> Iterator[tuple[str, pa.Table]]:
        """(table, chunk) pairs in dependency order; each chunk at most ``chunk_rows`` rows."""
        calendar = self.calendar
        yield from small_tables(self.seed, calendar).items()
        design_created = self._design_stamps(calendar)
        yield from self._designs(design_created)
        sales = Orders.draw(
            _rng(self.seed, "sales"), calendar, self.scale, (1_000, 100_000), (200, 400)
        )
        n_purchases = max(1, round(self.scale * PURCHASES_PER_SALE))
        purchases = Orders.draw(
            _rng(self.seed, "purchases"), calendar, n_purchases, (1, 999), (200, 100_000)
        )
        yield from self._sales(sales, design_created)
        yield from self._purchases(purchases)
        yield from self._transactions_and_payments(calendar, sales, purchases)

    def _chunks(self, n: int) -> Iterator[tuple[int, int, int]]:
        for number, lo in enumerate(range(0, n, self.chunk_rows)):
            yield number, lo, min(n, lo + self.chunk_rows)

    def _design_stamps(self, calendar: Calendar) -> np.ndarray:
        n = max(10, round(self.scale * DESIGNS_PER_SALE))
        initial = min(n, max(10, round(n * INITIAL_DESIGN_SHARE)))
        later = calendar.working_stamps(_rng(self.seed, "design-stamps"), n - initial)
        return np.concatenate([np.full(initial, calendar.initial_ms, dtype=np.int64), later])

    def _designs(self, created: np.ndarray) -> Iterator[tuple[str, pa.Table]]:
        n_all = len(created)
        rng = _rng(self.seed, "design")
        names = rng.integers(0, len(DESIGN_NAMES), n_all)
        locations = rng.integers(0, len(FILE_LOCATIONS), n_all)
        drawn = created - rng.integers(0, 500, n_all) * MS_PER_DAY
        codes = _letters(rng, n_all, 4, _LOWER_DIGITS)
        for _number, lo, hi in self._chunks(n_all):
            n = hi - lo
            name = _words(DESIGN_NAMES, names[lo:hi])
            day = _dates(drawn[lo:hi], np.zeros(n, dtype=np.int16))
            dash = pa.array(["-"] * n)
            columns = {
                "design_id": _ids(n, lo + 1),
                "design_name": name,
                "file_location": _words(FILE_LOCATIONS, locations[lo:hi]),
                "file_name": _join(
                    pc.utf8_lower(name),
                    dash,
                    pc.replace_substring(day, "-", ""),
                    dash,
                    _codes(codes[lo:hi]),
                    pa.array([".json"] * n),
                ),
                "created_at": _stamps(created[lo:hi]),
                "last_updated": _stamps(created[lo:hi]),
            }
            yield "design", _table("design", columns)

    def _sales(self, sales: Orders, design_created: np.ndarray) -> Iterator[tuple[str, pa.Table]]:
        # a sale uses a design that already existed when it was made
        known = np.searchsorted(design_created, sales.created, side="right")
        design = 1 + (_rng(self.seed, "sales-design").random(len(sales)) * known).astype(np.int32)
        for _number, lo, hi in self._chunks(len(sales)):
            columns = {
                "sales_order_id": _ids(hi - lo, lo + 1),
                "design_id": pa.array(design[lo:hi]),
                "units_sold": pa.array(sales.quantity[lo:hi]),
                "unit_price": _money(sales.price_cents[lo:hi]),
                **sales.common_columns(lo, hi),
            }
            yield "sales_order", _table("sales_order", columns)

    def _purchases(self, purchases: Orders) -> Iterator[tuple[str, pa.Table]]:
        codes = _letters(_rng(self.seed, "item-codes"), len(purchases), 7, _UPPER_DIGITS)
        for _number, lo, hi in self._chunks(len(purchases)):
            columns = {
                "purchase_order_id": _ids(hi - lo, lo + 1),
                "item_code": _codes(codes[lo:hi]),
                "item_quantity": pa.array(purchases.quantity[lo:hi]),
                "item_unit_price": _money(purchases.price_cents[lo:hi]),
                **purchases.common_columns(lo, hi),
            }
            yield "purchase_order", _table("purchase_order", columns)

    def _transactions_and_payments(
        self, calendar: Calendar, sales: Orders, purchases: Orders
    ) -> Iterator[tuple[str, pa.Table]]:
        """One transaction and one payment per order, numbered in time order; both share
        their order's created_at."""
        kind = np.concatenate([np.zeros(len(sales), np.int8), np.ones(len(purchases), np.int8)])
        index = np.concatenate([np.arange(len(sales)), np.arange(len(purchases))])
        created = np.concatenate([sales.created, purchases.created])
        order = np.lexsort((index, kind, created))
        kind, index, created = kind[order], index[order], created[order]
        n = len(order)

        merged = {
            field: np.concatenate([getattr(sales, field), getattr(purchases, field)])[order]
            for field in ("counterparty", "currency", "payment_days")
        }
        amount_cents = np.concatenate(
            [
                sales.quantity.astype(np.int64) * sales.price_cents,
                purchases.quantity.astype(np.int64) * purchases.price_cents,
            ]
        )[order]
        rng = _rng(self.seed, "payments")
        flip = created + rng.integers(MS_PER_DAY // 2, 6 * MS_PER_DAY, n, dtype=np.int64)
        paid = (rng.random(n) < PAID_SHARE) & (flip < calendar.end_ms)
        updated = np.where(paid, flip, created)
        accounts = rng.integers(10**7, 10**8, (2, n), dtype=np.int32)
        is_sale = kind == 0
        for _number, lo, hi in self._chunks(n):
            part = slice(lo, hi)
            sale = is_sale[part]
            order_id = pa.array((index[part] + 1).astype(np.int32))
            yield (
                "transaction",
                _table(
                    "transaction",
                    {
                        "transaction_id": _ids(hi - lo, lo + 1),
                        "transaction_type": pc.if_else(pa.array(sale), "SALE", "PURCHASE"),
                        "sales_order_id": pc.if_else(pa.array(sale), order_id, None),
                        "purchase_order_id": pc.if_else(pa.array(sale), None, order_id),
                        "created_at": _stamps(created[part]),
                        "last_updated": _stamps(created[part]),
                    },
                ),
            )
        for _number, lo, hi in self._chunks(n):
            part = slice(lo, hi)
            yield (
                "payment",
                _table(
                    "payment",
                    {
                        "payment_id": _ids(hi - lo, lo + 1),
                        "transaction_id": _ids(hi - lo, lo + 1),
                        "counterparty_id": pa.array(merged["counterparty"][part]),
                        "payment_amount": _money(amount_cents[part]),
                        "currency_id": pa.array(merged["currency"][part]),
                        "payment_type_id": pa.array(np.where(is_sale[part], 1, 3).astype(np.int32)),
                        "paid": pa.array(paid[part]),
                        "payment_date": _dates(created[part], merged["payment_days"][part]),
                        "company_ac_number": pa.array(accounts[0, part]),
                        "counterparty_ac_number": pa.array(accounts[1, part]),
                        "created_at": _stamps(created[part]),
                        "last_updated": _stamps(updated[part]),
                    },
                ),
            )


def generate(con, scale: int, seed: int = 42) -> dict[str, int]:
    """Create the schema in an empty database and fill it with the ``Plan`` for (scale, seed)
    in one transaction; returns rows per table."""
    plan = Plan(scale, seed)
    ensure_empty(con)
    counts = dict.fromkeys(TABLES_BY_NAME, 0)
    con.run("BEGIN")
    try:
        run_statements(con, schema_statements(constraints=False))
        for name, chunk in plan.tables():
            counts[name] += copy_table(con, TABLES_BY_NAME[name], chunk)
        reset_sequences(con)
        run_statements(con, constraint_statements())
        con.run("COMMIT")
    except DatabaseError as exc:
        con.run("ROLLBACK")
        raise TotesError(f"generating the source failed: {exc}") from None
    except Exception:
        con.run("ROLLBACK")
        raise
    con.run("ANALYZE")
    logger.info("source generated", extra={"scale": scale, "seed": seed, "rows": counts})
    return {t.name: counts[t.name] for t in TABLES}


def content_checksum(con) -> dict[str, str]:
    """An md5 of every table's full content in key order: equal checksums, equal databases."""
    sums = {}
    for table in TABLES:
        sql = (
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.{quote(table.key)}), '')) "  # noqa: S608  # nosec B608
            f"FROM {quote(table.name)} t"
        )
        sums[table.name] = con.run(sql)[0][0]
    return sums
