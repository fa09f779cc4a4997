-- API key usage (`api_keys.postgres`): replicas add their counts in batches
-- (api_keys.usage_flush_interval). A separate table, so that usage writes do not fire the key
-- table's NOTIFY trigger (which makes every replica forget the key).
CREATE TABLE portcullis_api_key_usage (
    id            text PRIMARY KEY REFERENCES portcullis_api_keys (id) ON DELETE CASCADE,
    use_count     bigint NOT NULL DEFAULT 0,
    last_used_at  timestamptz,
    last_address  text
);
