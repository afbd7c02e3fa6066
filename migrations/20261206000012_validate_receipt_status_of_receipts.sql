-- no-transaction
-- As 20261206000011, for `delivery_receipts`.
ALTER TABLE delivery_receipts VALIDATE CONSTRAINT delivery_receipts_status_check;
