-- The star schema BI tools query (warehouse.md). Column names and meanings are the contract;
-- the lineage columns are ours:
--   source_version   the source last_updated a row was built from. Dimensions move only
--                    forward on it; on facts it equals last_updated_date + last_updated_time.
--   loaded_batch_id  the pipeline batch that wrote the row (for tracing, not for queries).
-- dim_date is a calendar (a pure function of the date), so it carries no lineage.

CREATE TABLE dim_date (
    date_id      DATE PRIMARY KEY,
    year         INT NOT NULL,
    month        INT NOT NULL,
    day          INT NOT NULL,
    day_of_week  INT NOT NULL CHECK (day_of_week BETWEEN 1 AND 7),
    day_name     VARCHAR NOT NULL,
    month_name   VARCHAR NOT NULL,
    quarter      INT NOT NULL CHECK (quarter BETWEEN 1 AND 4)
);

CREATE TABLE dim_staff (
    staff_id         INT PRIMARY KEY,
    first_name       VARCHAR NOT NULL,
    last_name        VARCHAR NOT NULL,
    department_name  VARCHAR NOT NULL,
    location         VARCHAR,
    email_address    VARCHAR NOT NULL,
    source_version   TIMESTAMP(3) NOT NULL,
    loaded_batch_id  VARCHAR NOT NULL
);

CREATE TABLE dim_location (
    location_id      INT PRIMARY KEY,
    address_line_1   VARCHAR NOT NULL,
    address_line_2   VARCHAR,
    district         VARCHAR,
    city             VARCHAR NOT NULL,
    postal_code      VARCHAR NOT NULL,
    country          VARCHAR NOT NULL,
    phone            VARCHAR NOT NULL,
    source_version   TIMESTAMP(3) NOT NULL,
    loaded_batch_id  VARCHAR NOT NULL
);

CREATE TABLE dim_currency (
    currency_id      INT PRIMARY KEY,
    currency_code    VARCHAR NOT NULL,
    currency_name    VARCHAR,
    source_version   TIMESTAMP(3) NOT NULL,
    loaded_batch_id  VARCHAR NOT NULL
);

CREATE TABLE dim_design (
    design_id        INT PRIMARY KEY,
    design_name      VARCHAR NOT NULL,
    file_location    VARCHAR NOT NULL,
    file_name        VARCHAR NOT NULL,
    source_version   TIMESTAMP(3) NOT NULL,
    loaded_batch_id  VARCHAR NOT NULL
);

CREATE TABLE dim_counterparty (
    counterparty_id                    INT PRIMARY KEY,
    counterparty_legal_name            VARCHAR NOT NULL,
    counterparty_legal_address_line_1  VARCHAR NOT NULL,
    counterparty_legal_address_line_2  VARCHAR,
    counterparty_legal_district        VARCHAR,
    counterparty_legal_city            VARCHAR NOT NULL,
    counterparty_legal_postal_code     VARCHAR NOT NULL,
    counterparty_legal_country         VARCHAR NOT NULL,
    counterparty_legal_phone_number    VARCHAR NOT NULL,
    source_version                     TIMESTAMP(3) NOT NULL,
    loaded_batch_id                    VARCHAR NOT NULL
);

CREATE TABLE dim_transaction (
    transaction_id     INT PRIMARY KEY,
    transaction_type   VARCHAR NOT NULL,
    sales_order_id     INT,
    purchase_order_id  INT,
    source_version     TIMESTAMP(3) NOT NULL,
    loaded_batch_id    VARCHAR NOT NULL
);

CREATE TABLE dim_payment_type (
    payment_type_id    INT PRIMARY KEY,
    payment_type_name  VARCHAR NOT NULL,
    source_version     TIMESTAMP(3) NOT NULL,
    loaded_batch_id    VARCHAR NOT NULL
);

-- Facts keep full history: one row per source version (natural id, last_updated), stored once.

CREATE TABLE fact_sales_order (
    sales_record_id              SERIAL PRIMARY KEY,
    sales_order_id               INT NOT NULL,
    created_date                 DATE NOT NULL REFERENCES dim_date,
    created_time                 TIME(3) NOT NULL,
    last_updated_date            DATE NOT NULL REFERENCES dim_date,
    last_updated_time            TIME(3) NOT NULL,
    sales_staff_id               INT NOT NULL REFERENCES dim_staff,
    counterparty_id              INT NOT NULL REFERENCES dim_counterparty,
    units_sold                   INT NOT NULL,
    unit_price                   NUMERIC(10, 2) NOT NULL,
    currency_id                  INT NOT NULL REFERENCES dim_currency,
    design_id                    INT NOT NULL REFERENCES dim_design,
    agreed_payment_date          DATE NOT NULL REFERENCES dim_date,
    agreed_delivery_date         DATE NOT NULL REFERENCES dim_date,
    agreed_delivery_location_id  INT NOT NULL REFERENCES dim_location,
    source_version               TIMESTAMP(3) NOT NULL,
    loaded_batch_id              VARCHAR NOT NULL,
    CONSTRAINT fact_sales_order_version_key
        UNIQUE (sales_order_id, last_updated_date, last_updated_time)
);

CREATE TABLE fact_purchase_order (
    purchase_record_id           SERIAL PRIMARY KEY,
    purchase_order_id            INT NOT NULL,
    created_date                 DATE NOT NULL REFERENCES dim_date,
    created_time                 TIME(3) NOT NULL,
    last_updated_date            DATE NOT NULL REFERENCES dim_date,
    last_updated_time            TIME(3) NOT NULL,
    staff_id                     INT NOT NULL REFERENCES dim_staff,
    counterparty_id              INT NOT NULL REFERENCES dim_counterparty,
    item_code                    VARCHAR NOT NULL,
    item_quantity                INT NOT NULL,
    item_unit_price              NUMERIC(10, 2) NOT NULL,
    currency_id                  INT NOT NULL REFERENCES dim_currency,
    agreed_delivery_date         DATE NOT NULL REFERENCES dim_date,
    agreed_payment_date          DATE NOT NULL REFERENCES dim_date,
    agreed_delivery_location_id  INT NOT NULL REFERENCES dim_location,
    source_version               TIMESTAMP(3) NOT NULL,
    loaded_batch_id              VARCHAR NOT NULL,
    CONSTRAINT fact_purchase_order_version_key
        UNIQUE (purchase_order_id, last_updated_date, last_updated_time)
);

CREATE TABLE fact_payment (
    payment_record_id  SERIAL PRIMARY KEY,
    payment_id         INT NOT NULL,
    created_date       DATE NOT NULL REFERENCES dim_date,
    created_time       TIME(3) NOT NULL,
    last_updated_date  DATE NOT NULL REFERENCES dim_date,
    last_updated_time  TIME(3) NOT NULL,
    transaction_id     INT NOT NULL REFERENCES dim_transaction,
    counterparty_id    INT NOT NULL REFERENCES dim_counterparty,
    payment_amount     NUMERIC(10, 2) NOT NULL,
    currency_id        INT NOT NULL REFERENCES dim_currency,
    payment_type_id    INT NOT NULL REFERENCES dim_payment_type,
    paid               BOOLEAN NOT NULL,
    payment_date       DATE NOT NULL REFERENCES dim_date,
    source_version     TIMESTAMP(3) NOT NULL,
    loaded_batch_id    VARCHAR NOT NULL,
    CONSTRAINT fact_payment_version_key
        UNIQUE (payment_id, last_updated_date, last_updated_time)
);

-- BI joins and filters go through the fact foreign keys. The version keys above already
-- index each natural id; last_updated_date is their second column, so it gets its own index.
CREATE INDEX fact_sales_order_created_date_idx ON fact_sales_order (created_date);
CREATE INDEX fact_sales_order_last_updated_date_idx ON fact_sales_order (last_updated_date);
CREATE INDEX fact_sales_order_sales_staff_id_idx ON fact_sales_order (sales_staff_id);
CREATE INDEX fact_sales_order_counterparty_id_idx ON fact_sales_order (counterparty_id);
CREATE INDEX fact_sales_order_currency_id_idx ON fact_sales_order (currency_id);
CREATE INDEX fact_sales_order_design_id_idx ON fact_sales_order (design_id);
CREATE INDEX fact_sales_order_agreed_payment_date_idx ON fact_sales_order (agreed_payment_date);
CREATE INDEX fact_sales_order_agreed_delivery_date_idx ON fact_sales_order (agreed_delivery_date);
CREATE INDEX fact_sales_order_agreed_delivery_location_id_idx
    ON fact_sales_order (agreed_delivery_location_id);

CREATE INDEX fact_purchase_order_created_date_idx ON fact_purchase_order (created_date);
CREATE INDEX fact_purchase_order_last_updated_date_idx ON fact_purchase_order (last_updated_date);
CREATE INDEX fact_purchase_order_staff_id_idx ON fact_purchase_order (staff_id);
CREATE INDEX fact_purchase_order_counterparty_id_idx ON fact_purchase_order (counterparty_id);
CREATE INDEX fact_purchase_order_currency_id_idx ON fact_purchase_order (currency_id);
CREATE INDEX fact_purchase_order_agreed_delivery_date_idx
    ON fact_purchase_order (agreed_delivery_date);
CREATE INDEX fact_purchase_order_agreed_payment_date_idx
    ON fact_purchase_order (agreed_payment_date);
CREATE INDEX fact_purchase_order_agreed_delivery_location_id_idx
    ON fact_purchase_order (agreed_delivery_location_id);

CREATE INDEX fact_payment_created_date_idx ON fact_payment (created_date);
CREATE INDEX fact_payment_last_updated_date_idx ON fact_payment (last_updated_date);
CREATE INDEX fact_payment_transaction_id_idx ON fact_payment (transaction_id);
CREATE INDEX fact_payment_counterparty_id_idx ON fact_payment (counterparty_id);
CREATE INDEX fact_payment_currency_id_idx ON fact_payment (currency_id);
CREATE INDEX fact_payment_payment_type_id_idx ON fact_payment (payment_type_id);
CREATE INDEX fact_payment_payment_date_idx ON fact_payment (payment_date);
