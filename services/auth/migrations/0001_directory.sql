CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;

-- The tenant directory: groups own clinics; every clinic has an IANA time zone.
CREATE TABLE groups (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clinics (
    id uuid PRIMARY KEY,
    group_id uuid NOT NULL REFERENCES groups (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    time_zone text NOT NULL,
    country char(2) NOT NULL DEFAULT 'GB',
    -- Sandbox clinics hold test data; only sandbox applications may be granted them.
    sandbox boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clinics_group ON clinics (group_id);

CREATE TABLE partners (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    contact_email citext NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    id uuid PRIMARY KEY,
    partner_id uuid NOT NULL REFERENCES partners (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    client_id text NOT NULL,
    -- SHA-256 of a 256-bit random secret: a slow hash adds nothing against brute force of such a
    -- secret and would cap token issuance; staff passwords, low-entropy, use argon2id instead.
    secret_hash bytea NOT NULL,
    previous_secret_hash bytea,
    previous_secret_expires_at timestamptz,
    environment text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    tier smallint NOT NULL DEFAULT 0 CHECK (tier BETWEEN 0 AND 2),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'suspended')),
    contact_email citext NOT NULL,
    clinic_owned boolean NOT NULL DEFAULT false,
    dpa_signed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT applications_client_id_key UNIQUE (client_id)
);
CREATE INDEX applications_partner ON applications (partner_id);

-- A grant targets exactly one clinic or one whole group.
CREATE TABLE grants (
    id uuid PRIMARY KEY,
    application_id uuid NOT NULL REFERENCES applications (id),
    clinic_id uuid REFERENCES clinics (id),
    group_id uuid REFERENCES groups (id),
    scopes text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT grants_one_target CHECK ((clinic_id IS NULL) <> (group_id IS NULL))
);
CREATE UNIQUE INDEX grants_active_clinic ON grants (application_id, clinic_id)
    WHERE revoked_at IS NULL AND clinic_id IS NOT NULL;
CREATE UNIQUE INDEX grants_active_group ON grants (application_id, group_id)
    WHERE revoked_at IS NULL AND group_id IS NOT NULL;

CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    algorithm text NOT NULL,
    -- PKCS#8, encrypted with the deployment's key passphrase.
    private_key_pem bytea NOT NULL,
    public_jwk jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Published in the JWKS from created_at; used for signing from activates_at on, so that
    -- every resource service has seen it before the first token signed with it arrives.
    activates_at timestamptz NOT NULL,
    -- Set when a newer key takes over: kept in the JWKS until the last token it signed expires.
    retires_at timestamptz
);

CREATE TABLE staff_users (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    username citext NOT NULL,
    display_name text NOT NULL,
    role text NOT NULL DEFAULT 'staff' CHECK (role IN ('staff', 'vet', 'admin')),
    password_hash text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT staff_users_username_key UNIQUE (username)
);

-- Revoked access tokens, kept until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti text PRIMARY KEY,
    client_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
