"""The star schema as Apache Iceberg tables: a second, optional load target beside PostgreSQL.

Each processed batch (one processed manifest) is committed into one Iceberg table per star
table, catalogued in AWS Glue (locally: Glue in the emulator, or pyiceberg's SQL catalog),
with the warehouse's semantics: dimensions hold the latest committed state per key whatever
the order of batches, facts one row per version, ``source_deleted_at`` marks deleted keys,
``dim_date`` is a calendar and facts pointing at a set-aside dimension row wait in a park.

- ``tables``: the Iceberg schemas and table properties, and the processed rows in them (pure);
- ``merge``: the merge of a batch's rows into the stored rows of the keys it touches (pure);
- ``catalog``: the catalog and the tables, created when missing;
- ``commit``: one table's commit, at most once per batch, retried on a concurrent commit;
- ``batch``: one processed batch across the tables, in an order that keeps readers safe;
- ``maintenance``: snapshot expiry, compaction of small files, removal of unreferenced files.
"""
