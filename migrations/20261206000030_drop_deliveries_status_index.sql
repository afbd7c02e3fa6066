-- no-transaction
-- `deliveries_status (status, updated_at)` served one query, the count of scheduled rows, which
-- `deliveries_due` (partial: status = 'scheduled') answers as well; every delivery paid for it
-- twice (its insert and its outcome's update). Issue 20 (BENCHMARKS.md, session 11).
-- Live-table safe (CONCURRENTLY, one statement, no transaction): see 20261206000001.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_status;
