-- Transient token API failures (-1, HTTP 5xx, timeouts) in a row, shared by every process: after
-- the n-th, nobody asks WeChat before backoff_until (1 s, doubling up to 30 s). A success resets
-- both. last_failure says what went wrong, for the processes that wait instead of asking.
ALTER TABLE wechat_tokens
    ADD COLUMN failures_in_row INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN backoff_until   TIMESTAMPTZ,
    ADD COLUMN last_failure    TEXT;
