"""Incremental extraction from totesys, one module per seam:

- ``snapshot``: the one ``REPEATABLE READ READ ONLY`` transaction every read of a run happens
  in, and the schema check against the source model;
- ``watermark``: the ``[lo, hi)`` window on ``last_updated`` (source clock minus a lag, the
  previous ``hi`` minus an overlap), the "nothing new" test and the split of a backlog into
  bounded windows;
- ``closure``: which rows a self-contained batch carries (changed rows plus the rows they
  reference or embed), as constant SQL derived from the source model;
- ``stream``: ``COPY ... TO STDOUT`` streamed into typed Arrow chunks, in closure order.

Everything runs inside the one snapshot, so the clock, the batch plan, the closure of
referenced rows and every table's rows all come from one consistent view of the source. COPY
cannot take bind parameters, so the window and key sets travel as transaction-local settings
(``set_config(..., true)`` with parameters) that the constant SQL text reads back; SQL
identifiers come only from ``totes.source.model``.
"""
