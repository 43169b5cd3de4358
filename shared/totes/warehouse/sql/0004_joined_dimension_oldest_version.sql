-- dim_staff and dim_counterparty are each joined from two source rows, and their
-- source_version is the newer of the two last_updated stamps. Two snapshots can tie on that
-- stamp while differing in content (the other row changed in a transaction that committed
-- late), so the upsert compared equal versions and kept whichever batch arrived first.
-- oldest_version, the older of the two stamps, breaks the tie: the upsert now moves a row
-- forward when (source_version, oldest_version) grows as a row.
--
-- Rows stored before this migration get '-infinity': their older stamp is unknown, so the next
-- batch with an equal source_version overtakes them and records it.

ALTER TABLE dim_staff ADD COLUMN oldest_version TIMESTAMP(3) NOT NULL DEFAULT '-infinity';
ALTER TABLE dim_staff ALTER COLUMN oldest_version DROP DEFAULT;

ALTER TABLE dim_counterparty ADD COLUMN oldest_version TIMESTAMP(3) NOT NULL DEFAULT '-infinity';
ALTER TABLE dim_counterparty ALTER COLUMN oldest_version DROP DEFAULT;
