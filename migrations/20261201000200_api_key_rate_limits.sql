-- A key's own rate limit (rate_limits, per key): requests per second and burst; NULL: none.
-- Changing it notifies the replicas like any other change of the key (the trigger).
ALTER TABLE portcullis_api_keys
    ADD COLUMN rate_limit_per_second double precision CHECK (rate_limit_per_second >= 1.0 / 86400),
    ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst BETWEEN 1 AND 1000000),
    ADD CHECK ((rate_limit_per_second IS NULL) = (rate_limit_burst IS NULL)),
    -- The burst refills within 30 days (the counters' lifetime).
    ADD CHECK (rate_limit_burst / rate_limit_per_second <= 2592000);
