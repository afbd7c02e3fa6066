-- The third-party platform (docs/interface.md §10): what WeChat pushes to a platform, kept in
-- Postgres, the source of truth for every worker and receiver of the fleet.

-- The latest verify ticket per platform (WeChat pushes one every 10 minutes; valid 12 h). A push
-- with an older CreateTime never replaces a newer ticket; one per platform, so two platforms'
-- tickets never overwrite each other.
CREATE TABLE platform_tickets (
    component_appid TEXT        PRIMARY KEY,
    ticket          TEXT        NOT NULL,
    -- The push's CreateTime (no later than its arrival).
    pushed_at       TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One component access token per platform, shared by every worker (the row lock is the
-- fleet-wide single flight, as for `wechat_tokens`).
CREATE TABLE platform_tokens (
    component_appid TEXT        PRIMARY KEY,
    access_token    TEXT,
    expires_at      TIMESTAMPTZ,
    generation      BIGINT      NOT NULL DEFAULT 0,
    fetched_at      TIMESTAMPTZ,
    last_error      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The merchants (authorizers): one row per merchant account, its state and, once its code is
-- exchanged, its refresh token. `changed_at`: the latest authorization push applied (an older
-- push arriving late changes nothing).
CREATE TABLE authorizers (
    authorizer_appid TEXT        PRIMARY KEY,
    component_appid  TEXT        NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('active', 'revoked', 'needs_reauthorization')),
    func_info        JSONB,
    authorized_at    TIMESTAMPTZ,
    revoked_at       TIMESTAMPTZ,
    changed_at       TIMESTAMPTZ NOT NULL,
    refresh_token    TEXT,
    -- The merchant's access token, shared by every worker; `generation` counts its refreshes (a
    -- rejected token is replaced only if it is still the current one).
    access_token     TEXT,
    access_expires_at TIMESTAMPTZ,
    generation       BIGINT      NOT NULL DEFAULT 0,
    refreshed_at     TIMESTAMPTZ,
    last_error       TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX authorizers_platform ON authorizers (component_appid, state);

-- Authorization codes pushed with `authorized` / `updateauthorized`, kept until exchanged for
-- the merchant's tokens (`api_query_auth`; a code lasts about an hour). A repeated push is the
-- same row.
CREATE TABLE platform_authorizations (
    component_appid    TEXT        NOT NULL,
    authorizer_appid   TEXT        NOT NULL,
    authorization_code TEXT        NOT NULL,
    code_expires_at    TIMESTAMPTZ,
    is_update          BOOLEAN     NOT NULL,
    pushed_at          TIMESTAMPTZ NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    exchanged_at       TIMESTAMPTZ,
    last_error         TEXT,
    PRIMARY KEY (authorizer_appid, authorization_code)
);

CREATE INDEX platform_authorizations_waiting ON platform_authorizations (pushed_at) WHERE exchanged_at IS NULL;
