-- Fact date columns get BRIN instead of B-tree indexes. Facts arrive in time order (the
-- initial load in natural-id order, which follows creation; later batches as rows change), so
-- created, last-updated and agreed dates correlate with where a row is stored and a block-range
-- summary narrows a date filter almost as well as a B-tree, at a fraction of the upkeep.
-- Measured on 1M fact_sales_order rows (docs/load.md): building one 0.08-0.10 s vs 0.37-0.45 s;
-- inserting 100k rows with these four as BRIN 1.22 s vs 1.95 s with nine B-trees.
-- Same names, so every fact foreign key column still leads an index.

DROP INDEX fact_sales_order_created_date_idx, fact_sales_order_last_updated_date_idx,
    fact_sales_order_agreed_payment_date_idx, fact_sales_order_agreed_delivery_date_idx,
    fact_purchase_order_created_date_idx, fact_purchase_order_last_updated_date_idx,
    fact_purchase_order_agreed_delivery_date_idx, fact_purchase_order_agreed_payment_date_idx,
    fact_payment_created_date_idx, fact_payment_last_updated_date_idx,
    fact_payment_payment_date_idx;

CREATE INDEX fact_sales_order_created_date_idx
    ON fact_sales_order USING brin (created_date);
CREATE INDEX fact_sales_order_last_updated_date_idx
    ON fact_sales_order USING brin (last_updated_date);
CREATE INDEX fact_sales_order_agreed_payment_date_idx
    ON fact_sales_order USING brin (agreed_payment_date);
CREATE INDEX fact_sales_order_agreed_delivery_date_idx
    ON fact_sales_order USING brin (agreed_delivery_date);

CREATE INDEX fact_purchase_order_created_date_idx
    ON fact_purchase_order USING brin (created_date);
CREATE INDEX fact_purchase_order_last_updated_date_idx
    ON fact_purchase_order USING brin (last_updated_date);
CREATE INDEX fact_purchase_order_agreed_delivery_date_idx
    ON fact_purchase_order USING brin (agreed_delivery_date);
CREATE INDEX fact_purchase_order_agreed_payment_date_idx
    ON fact_purchase_order USING brin (agreed_payment_date);

CREATE INDEX fact_payment_created_date_idx ON fact_payment USING brin (created_date);
CREATE INDEX fact_payment_last_updated_date_idx ON fact_payment USING brin (last_updated_date);
CREATE INDEX fact_payment_payment_date_idx ON fact_payment USING brin (payment_date);
