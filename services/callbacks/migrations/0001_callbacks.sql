-- Who may see which clinic's events: a projection of the auth service's directory, kept from
-- clinic.*, application.* and grant.* events (and a snapshot taken at start-up).
CREATE TABLE clinics (
    clinic_id   uuid PRIMARY KEY,
    group_id    uuid NOT NULL,
    sandbox     boolean NOT NULL,
    changed_at  timestamptz NOT NULL
);

CREATE TABLE applications (
    application_id  uuid PRIMARY KEY,
    client_id       text NOT NULL,
    environment     text NOT NULL,
    status          text NOT NULL,
    contact_email   text NOT NULL,
    changed_at      timestamptz NOT NULL
);

CREATE TABLE grants (
    grant_id        uuid PRIMARY KEY,
    application_id  uuid NOT NULL,
    clinic_id       uuid,
    group_id        uuid,
    scopes          text[] NOT NULL,
    -- Revocation is final: a snapshot older than the revocation cannot bring a grant back.
    revoked         boolean NOT NULL DEFAULT false
);
CREATE INDEX grants_by_application ON grants (application_id) WHERE NOT revoked;

-- The scopes of which at least one must be granted to see an event type; NULL: no one through
-- a grant (events addressed to one application, e.g. grant.*, carry that application instead).
CREATE FUNCTION event_scopes(event_type text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE split_part(event_type, '.', 1)
        WHEN 'booking' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'slots' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'working_hours' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'break' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'practitioner' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'service' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'insurance' THEN ARRAY['bookings:read', 'bookings:write']
        WHEN 'client' THEN ARRAY['clients:read']
        WHEN 'patient' THEN ARRAY['clients:read']
        WHEN 'clinic' THEN ARRAY['bookings:read', 'bookings:write', 'registrations:write',
                                 'clients:read']
        ELSE NULL
    END
$$;

-- The auth service's rule: a direct grant on the clinic, or a grant on its group when the clinic
-- is of the application's environment; never for a suspended application.
CREATE FUNCTION may_see(app uuid, clinic uuid, event_type text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM grants g
        JOIN applications a ON a.application_id = g.application_id
        LEFT JOIN clinics c ON c.clinic_id = clinic
        WHERE g.application_id = app
          AND NOT g.revoked
          AND a.status <> 'suspended'
          AND g.scopes && event_scopes(event_type)
          AND (g.clinic_id = clinic
               OR (g.group_id = c.group_id AND c.sandbox = (a.environment = 'sandbox')))
    )
$$;

-- Every event a partner may be told about, for delivery and for the PULL feed. ``txid`` orders
-- the feed: rows of transactions older than the oldest one still running are final.
CREATE TABLE events (
    seq             bigserial PRIMARY KEY,
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid NOT NULL UNIQUE,
    event_type      text NOT NULL,
    clinic_id       uuid,
    application_id  uuid,
    aggregate       text,
    sequence        bigint NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    body            text NOT NULL
);
CREATE INDEX events_feed ON events (txid, seq);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_by_aggregate ON events (aggregate, sequence) WHERE aggregate IS NOT NULL;

-- How far each resource's events have arrived without a gap; ordered endpoints wait for it.
CREATE TABLE aggregates (
    aggregate   text PRIMARY KEY,
    contiguous      bigint NOT NULL
);

CREATE TABLE endpoints (
    id                  uuid PRIMARY KEY,
    application_id      uuid NOT NULL,
    url                 text NOT NULL,
    description         text NOT NULL DEFAULT '',
    event_types         text[],
    clinic_ids          uuid[],
    rate_limit          integer CHECK (rate_limit IS NULL OR rate_limit > 0),
    ordered             boolean NOT NULL DEFAULT false,
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    disabled_at         timestamptz,
    -- The first failed attempt since the last success: five days of it disable the endpoint.
    failing_since       timestamptz,
    last_success_at     timestamptz,
    next_ping_at        timestamptz NOT NULL DEFAULT now(),
    last_ping_at        timestamptz,
    last_ping_status    integer,
    last_ping_error     text,
    ping_failures       integer NOT NULL DEFAULT 0,
    alerted             boolean NOT NULL DEFAULT false,
    version             integer NOT NULL DEFAULT 1,
    idempotency_key     text,
    request_hash        bytea,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT endpoints_idempotency_key UNIQUE (application_id, idempotency_key)
);
CREATE INDEX endpoints_by_application ON endpoints (application_id, created_at, id);
CREATE INDEX endpoints_ping_due ON endpoints (next_ping_at) WHERE enabled;

CREATE TABLE endpoint_secrets (
    id          uuid PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when a rotation replaces the secret: it keeps signing until then.
    expires_at  timestamptz
);
CREATE INDEX endpoint_secrets_by_endpoint ON endpoint_secrets (endpoint_id);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    event_seq       bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    aggregate       text,
    sequence        bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A worker owns a claimed delivery until the lease ends; only its token may record.
    lease_until     timestamptz,
    lease_token     uuid,
    -- The next attempt was asked for by a replay rather than by the schedule.
    replay          boolean NOT NULL DEFAULT false,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
-- Claiming: an endpoint's due deliveries in claim order (first attempts before retries), and
-- the ones held by a worker right now.
CREATE INDEX deliveries_due ON deliveries (endpoint_id, (attempts > 0), next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (endpoint_id)
    WHERE status = 'pending' AND lease_token IS NOT NULL;
CREATE INDEX deliveries_ordered ON deliveries (endpoint_id, aggregate, sequence)
    WHERE status = 'pending';
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, created_at, id);
CREATE INDEX deliveries_failed ON deliveries (endpoint_id, completed_at) WHERE status = 'failed';
CREATE INDEX deliveries_by_event_seq ON deliveries (event_seq);

CREATE TABLE attempts (
    id                  bigserial PRIMARY KEY,
    delivery_id         uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempted_at        timestamptz NOT NULL,
    duration_ms         integer NOT NULL,
    status_code         integer,
    response_excerpt    text,
    error               text,
    trigger             text NOT NULL CHECK (trigger IN ('scheduled', 'replay', 'test'))
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);

-- Alert and recovery mail, written in the transaction that decided to send it.
CREATE TABLE mails (
    id              bigserial PRIMARY KEY,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    endpoint_id     uuid,
    kind            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    sent_at         timestamptz
);
CREATE INDEX mails_due ON mails (next_attempt_at) WHERE sent_at IS NULL;
