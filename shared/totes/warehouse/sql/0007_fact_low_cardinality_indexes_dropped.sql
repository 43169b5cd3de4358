-- Issue 16: the B-tree indexes on the fact columns that reference the small dimensions (staff,
-- counterparty, currency, location, payment type: 3 to 30 rows each) are dropped. Their
-- foreign keys have not been enforced by PostgreSQL since 0006, so these indexes served only
-- BI filters, and a filter on one of a few dozen values selects a few percent of a fact's rows
-- spread over nearly every page: the planner reads the table (or a date BRIN) instead, with or
-- without them. Their upkeep was a quarter to a third of every load's server CPU.
-- Measured (docs/load.md "Fact indexes"): the backfill's load -25% server CPU; the BI queries
-- filtering or grouping on these columns within noise at 300,000 and 1,000,000 orders.
-- Kept: the version keys, the primary keys, the date BRINs (0003) and the B-trees on
-- design_id and transaction_id, which reference large dimensions and stay selective.
-- An owner whose small dimensions grow into thousands of rows can add an index back; the load
-- neither needs nor minds one.
--
-- DROP INDEX takes a brief ACCESS EXCLUSIVE lock on the fact (no scan): the lock_timeout makes
-- a migration that would queue behind a long BI query fail (and roll back whole) instead of
-- blocking every reader behind it; run it again later.

SET LOCAL lock_timeout = '10s';

DROP INDEX IF EXISTS
    fact_sales_order_sales_staff_id_idx,
    fact_sales_order_counterparty_id_idx,
    fact_sales_order_currency_id_idx,
    fact_sales_order_agreed_delivery_location_id_idx,
    fact_purchase_order_staff_id_idx,
    fact_purchase_order_counterparty_id_idx,
    fact_purchase_order_currency_id_idx,
    fact_purchase_order_agreed_delivery_location_id_idx,
    fact_payment_counterparty_id_idx,
    fact_payment_currency_id_idx,
    fact_payment_payment_type_id_idx;

SET LOCAL lock_timeout = DEFAULT;
