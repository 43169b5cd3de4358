-- Issue 16: the fact tables' foreign keys stop being enforced by PostgreSQL; every load checks
-- its batch's references instead (set-based, inside the batch's transaction, after the
-- dimension merges, naming table, column and ids; docs/load.md "One load path").
--
-- Why: an enforced foreign key costs a trigger per inserted row, and the only cheaper way to
-- keep it enforced was to drop and re-add it (and the BI indexes) per batch, which rebuilt over
-- the whole table in every batch (O(n^2 / batch) for a backfill) and held ACCESS EXCLUSIVE on
-- the fact and every dimension it references until commit, blocking every BI query.
--
-- PostgreSQL >= 18: the constraints stay declared, NOT ENFORCED (metadata only), so people and
-- BI tools reading the catalog (information_schema, pg_constraint) still see the star.
-- PostgreSQL < 18 has no NOT ENFORCED: the constraints are dropped.
-- On both, each referencing column's COMMENT records the relationship.
--
-- Either way the ALTER takes a brief ACCESS EXCLUSIVE lock on the fact and its dimensions (no
-- rewrite, no scan); the lock_timeout makes a migration that would queue behind a long BI query
-- fail (and roll back whole) instead of blocking every reader behind it: run it again later.

SET LOCAL lock_timeout = '10s';

DO $migration$
DECLARE
    fk record;
    has_not_enforced boolean := current_setting('server_version_num')::int >= 180000;
BEGIN
    FOR fk IN
        SELECT c.conname, t.relname AS fact, a.attname AS col, d.relname AS dim,
               da.attname AS dim_key
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_class d ON d.oid = c.confrelid
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute da ON da.attrelid = c.confrelid AND da.attnum = c.confkey[1]
        WHERE c.contype = 'f'
          AND t.relnamespace = current_schema()::regnamespace
          AND t.relname IN ('fact_sales_order', 'fact_purchase_order', 'fact_payment')
        ORDER BY t.relname, a.attname
    LOOP
        EXECUTE format(
            'COMMENT ON COLUMN %I.%I IS %L', fk.fact, fk.col,
            format('references %s(%s); checked by every load, not enforced by PostgreSQL',
                   fk.dim, fk.dim_key));
        IF has_not_enforced THEN
            EXECUTE format('ALTER TABLE %I ALTER CONSTRAINT %I NOT ENFORCED', fk.fact, fk.conname);
        ELSE
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', fk.fact, fk.conname);
        END IF;
    END LOOP;
END
$migration$;

SET LOCAL lock_timeout = DEFAULT;
