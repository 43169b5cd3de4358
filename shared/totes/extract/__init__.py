"""Incremental extraction from totesys, one module per seam:

- ``snapshot``: the one ``REPEATABLE READ READ ONLY`` transaction every read of a run happens
  in, and the schema check against the source model;
- ``capture``: which row versions are new since the lake's capture state, by commit order
  (``xmin`` against the previous snapshot), never by ``last_updated``;
- ``state``: where a run starts from (the state pointer, else the newest sound manifest);
- ``plan``: live and new rows per table, and the split of a large run into bounded pieces;
- ``keysets``: hard deletes, from the key sets of the last capture;
- ``closure``: which rows a self-contained batch carries (changed rows plus the rows they
  reference or embed), as constant SQL derived from the source model;
- ``stream``: ``COPY ... TO STDOUT`` streamed into typed Arrow chunks, in closure order.

Everything runs inside the one snapshot, so the snapshot, the batch plan, the closure of
referenced rows and every table's rows all come from one consistent view of the source. COPY
cannot take bind parameters, so the selection and key sets travel as transaction-local settings
(``set_config(..., true)`` with parameters) that the constant SQL text reads back; SQL
identifiers come only from ``totes.source.model``.
"""
