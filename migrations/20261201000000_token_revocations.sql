-- Revoked JWTs (`portcullis tokens revoke`): one token by its `jti`, or every token of a
-- subject issued before a time ("log out everywhere"), optionally only those of one
-- configured issuer (by its name in the config). Each replica keeps the list in memory.
CREATE TABLE portcullis_token_revocations (
    id             bigserial PRIMARY KEY,
    jti            text CHECK (length(jti) BETWEEN 1 AND 1024),
    subject        text CHECK (length(subject) BETWEEN 1 AND 1024),
    issuer         text CHECK (length(issuer) BETWEEN 1 AND 256),
    issued_before  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- When the entry may go: a revoked token has expired by then.
    expires_at     timestamptz NOT NULL,
    CHECK ((jti IS NULL) <> (subject IS NULL)),
    CHECK ((subject IS NULL) = (issued_before IS NULL))
);

CREATE INDEX portcullis_token_revocations_expires ON portcullis_token_revocations (expires_at);

-- Every new revocation tells the replicas its id (LISTEN portcullis_token_revocations);
-- they read what is newer than the last id they have.
CREATE FUNCTION portcullis_token_revocations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_token_revocations', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER portcullis_token_revocations_added
    AFTER INSERT ON portcullis_token_revocations
    FOR EACH ROW EXECUTE FUNCTION portcullis_token_revocations_notify();
