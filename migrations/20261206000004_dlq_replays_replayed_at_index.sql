-- no-transaction
-- `prune` deletes old replay records in batches, oldest first (issue 16).
-- Live-table safe (CONCURRENTLY, one statement, no transaction): see 20261206000001.
CREATE INDEX CONCURRENTLY dlq_replays_replayed_at ON dlq_replays (replayed_at);
