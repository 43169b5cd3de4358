-- One row per loaded batch, written in the same transaction as the batch's rows: a batch
-- found here is acknowledged and skipped, so a redelivered event loads nothing twice even
-- after its idempotency record has expired.

CREATE TABLE etl_batch_ledger (
    batch_id         VARCHAR PRIMARY KEY,
    source_batch_id  VARCHAR,
    window_lo        TIMESTAMP(6),
    window_hi        TIMESTAMP(6) NOT NULL,
    hi_utc           TIMESTAMPTZ,
    row_counts       JSONB NOT NULL,
    loaded_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
