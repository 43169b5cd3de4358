"""What the warehouse merge tests share: a connection that records how each merge statement
was allowed to join (``totes.warehouse.plans``)."""

from __future__ import annotations

import re

# A merge statement and the table it writes: UPDATE "t" ... or INSERT INTO "t" ...
_WRITE = re.compile(r'^(UPDATE|INSERT INTO) "(\w+)"')


class JoinRecorder:
    """A pg8000 connection that records, before each UPDATE or INSERT of a star table, whether
    the statement runs with hash and merge joins off (index probes) or left to the planner."""

    def __init__(self, con) -> None:
        self.con = con
        self.probed: list[tuple[str, str, bool]] = []  # (UPDATE | INSERT, table, probes)

    def __getattr__(self, name: str):
        return getattr(self.con, name)

    def run(self, sql: str, **params):
        write = _WRITE.match(sql)
        if write and write[2].startswith(("dim_", "fact_")):
            [[hashing, merging]] = self.con.run(
                "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')"
            )
            probes = (hashing, merging) == ("off", "off")
            self.probed.append((write[1].split()[0], write[2], probes))
        return self.con.run(sql, **params)

    def facts(self) -> list[tuple[str, str, bool]]:
        return [p for p in self.probed if p[1].startswith("fact_")]

    def dimension(self, name: str) -> list[tuple[str, bool]]:
        """(UPDATE | INSERT, probes) of each statement that wrote dimension ``name``."""
        return [(s, p) for s, t, p in self.probed if t == name]
