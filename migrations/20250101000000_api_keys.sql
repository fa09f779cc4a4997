-- API keys (SPEC §4): only the SHA-256 of each key is stored, as 64 lower-case hex digits.
CREATE TABLE portcullis_api_keys (
    id          text PRIMARY KEY,
    sha256      text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    subject     text NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    expires_at  timestamptz,
    disabled    boolean NOT NULL DEFAULT false,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX portcullis_api_keys_subject ON portcullis_api_keys (subject);

-- Every change tells the replicas which digest to forget (LISTEN portcullis_api_keys).
CREATE FUNCTION portcullis_api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR TG_OP = 'DELETE' THEN
        PERFORM pg_notify('portcullis_api_keys', OLD.sha256);
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('portcullis_api_keys', NEW.sha256);
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.sha256 <> OLD.sha256 THEN
            PERFORM pg_notify('portcullis_api_keys', NEW.sha256);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER portcullis_api_keys_changed
    AFTER INSERT OR UPDATE OR DELETE ON portcullis_api_keys
    FOR EACH ROW EXECUTE FUNCTION portcullis_api_keys_notify();
