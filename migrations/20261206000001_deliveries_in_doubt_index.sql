-- no-transaction
-- Deliveries in doubt (issue 16): `status` and every worker's gauges count them; without an index
-- that means reading every open row. Tiny: only rows with `in_doubt_since` set are in it.
--
-- Written to be applied to a live table (docs/operations.md, "Upgrading"): CONCURRENTLY, so
-- workers keep writing `deliveries` while it is built; that cannot run in a transaction, hence
-- the first line (sqlx applies this file outside one), and one statement a file (several
-- statements sent at once would run as one implicit transaction). If it fails half way it leaves
-- an INVALID index: `DROP INDEX CONCURRENTLY deliveries_in_doubt;` then `wxnotify migrate` again.
CREATE INDEX CONCURRENTLY deliveries_in_doubt ON deliveries (status) WHERE in_doubt_since IS NOT NULL;
