-- A credentials block (40001/40125... from the token API) is tied to the secret that was rejected:
-- a worker whose secret has another fingerprint ignores it and asks WeChat itself, so one worker
-- with a wrong secret cannot stop the workers that have the right one. The fingerprint is the first
-- 16 hex digits of SHA-256("wxnotify-secret-fp:" || secret); the secret itself is never stored.
-- NULL: a block without a fingerprint (set before this column existed, or the daily quota),
-- respected by everyone.
ALTER TABLE wechat_tokens ADD COLUMN blocked_secret_fp TEXT;
