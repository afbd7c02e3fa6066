-- no-transaction
-- No query reads attempts by `started_at` (they are read by delivery, and pruned with their
-- delivery); every attempt paid an index entry for it. Issue 20 (BENCHMARKS.md, session 11).
-- Live-table safe (CONCURRENTLY, one statement, no transaction): see 20261206000001.
DROP INDEX CONCURRENTLY IF EXISTS delivery_attempts_started;
