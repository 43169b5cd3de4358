-- Issue 12: rows follow the source's commit order, deleted keys are marked, and facts whose
-- dimension row transform set aside wait in a park instead of failing their batch.
--
-- capture_seq        the capture (ingest run, in commit order) of the batch that last wrote
--                    the row. Dimensions move forward on (capture_seq, source_version
--                    [, oldest_version]): commit order first, the stamps only order the rows
--                    of batches from before this migration, which keep 0. On a fact it is the
--                    latest capture that delivered that version.
-- source_deleted_at  when the pipeline saw the key gone from the source (naive UTC), on every
--                    row of the key; NULL while the key lives (warehouse.md).
-- dim_date is a calendar: it has no source keys to delete.

ALTER TABLE dim_staff
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_location
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_currency
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_design
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_counterparty
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_transaction
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE dim_payment_type
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE fact_sales_order
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE fact_purchase_order
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;
ALTER TABLE fact_payment
    ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN source_deleted_at TIMESTAMP;

-- Tombstones: the latest deletion of each key (the greatest capture_seq), never removed. A key
-- is deleted while its tombstone is newer than the key's latest content (a dimension row's
-- capture_seq; the greatest over a fact's versions), so batches may arrive in any order.
CREATE TABLE etl_deleted_keys (
    star_table   VARCHAR NOT NULL,
    key          INT NOT NULL,
    capture_seq  BIGINT NOT NULL,
    deleted_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (star_table, key)
);

ALTER TABLE etl_batch_ledger ADD COLUMN capture_seq BIGINT NOT NULL DEFAULT 0;

-- Parked facts: rows of a batch that reference a dimension row transform set aside (so it is
-- in neither the batch nor the warehouse), with the batch and capture they came from. Every
-- load moves the rows whose references all resolve into the fact table.

CREATE TABLE etl_parked_fact_sales_order (
    sales_order_id               INT NOT NULL,
    created_date                 DATE NOT NULL,
    created_time                 TIME(3) NOT NULL,
    last_updated_date            DATE NOT NULL,
    last_updated_time            TIME(3) NOT NULL,
    sales_staff_id               INT NOT NULL,
    counterparty_id              INT NOT NULL,
    units_sold                   INT NOT NULL,
    unit_price                   NUMERIC(10, 2) NOT NULL,
    currency_id                  INT NOT NULL,
    design_id                    INT NOT NULL,
    agreed_payment_date          DATE NOT NULL,
    agreed_delivery_date         DATE NOT NULL,
    agreed_delivery_location_id  INT NOT NULL,
    source_version               TIMESTAMP(3) NOT NULL,
    batch_id                     VARCHAR NOT NULL,
    capture_seq                  BIGINT NOT NULL,
    PRIMARY KEY (sales_order_id, last_updated_date, last_updated_time, batch_id)
);

CREATE TABLE etl_parked_fact_purchase_order (
    purchase_order_id            INT NOT NULL,
    created_date                 DATE NOT NULL,
    created_time                 TIME(3) NOT NULL,
    last_updated_date            DATE NOT NULL,
    last_updated_time            TIME(3) NOT NULL,
    staff_id                     INT NOT NULL,
    counterparty_id              INT NOT NULL,
    item_code                    VARCHAR NOT NULL,
    item_quantity                INT NOT NULL,
    item_unit_price              NUMERIC(10, 2) NOT NULL,
    currency_id                  INT NOT NULL,
    agreed_delivery_date         DATE NOT NULL,
    agreed_payment_date          DATE NOT NULL,
    agreed_delivery_location_id  INT NOT NULL,
    source_version               TIMESTAMP(3) NOT NULL,
    batch_id                     VARCHAR NOT NULL,
    capture_seq                  BIGINT NOT NULL,
    PRIMARY KEY (purchase_order_id, last_updated_date, last_updated_time, batch_id)
);

CREATE TABLE etl_parked_fact_payment (
    payment_id         INT NOT NULL,
    created_date       DATE NOT NULL,
    created_time       TIME(3) NOT NULL,
    last_updated_date  DATE NOT NULL,
    last_updated_time  TIME(3) NOT NULL,
    transaction_id     INT NOT NULL,
    counterparty_id    INT NOT NULL,
    payment_amount     NUMERIC(10, 2) NOT NULL,
    currency_id        INT NOT NULL,
    payment_type_id    INT NOT NULL,
    paid               BOOLEAN NOT NULL,
    payment_date       DATE NOT NULL,
    source_version     TIMESTAMP(3) NOT NULL,
    batch_id           VARCHAR NOT NULL,
    capture_seq        BIGINT NOT NULL,
    PRIMARY KEY (payment_id, last_updated_date, last_updated_time, batch_id)
);
