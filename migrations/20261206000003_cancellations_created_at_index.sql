-- no-transaction
-- `prune` deletes old cancellations in batches, oldest first (issue 16).
-- Live-table safe (CONCURRENTLY, one statement, no transaction): see 20261206000001.
CREATE INDEX CONCURRENTLY delivery_cancellations_created_at ON delivery_cancellations (created_at);
