-- no-transaction
-- Validates the wider check of 20261206000010 on a live table: VALIDATE CONSTRAINT scans the rows
-- under a lock that lets workers keep writing (SHARE UPDATE EXCLUSIVE). One statement a file, as
-- in 20261206000001.
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_receipt_status_check;
