-- no-transaction
-- `prune` deletes receipts by age, oldest first, in batches (issue 16); without this index each
-- batch read the table from its start, past the rows earlier batches had left dead.
-- Live-table safe (CONCURRENTLY, one statement, no transaction): see 20261206000001.
CREATE INDEX CONCURRENTLY delivery_receipts_received_at ON delivery_receipts (received_at);
