-- What registrations needs to know of a clinic, from the auth service's directory: its group
-- (clients belong to the group), its country (phones and postcodes are read in it) and its zone
-- (a date of birth may not lie after the clinic's today).
CREATE TABLE clinics (
    id uuid PRIMARY KEY,
    group_id uuid NOT NULL,
    country char(2) NOT NULL,
    time_zone text NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX clinics_group ON clinics (group_id);

-- The lists a group changed from the defaults (the defaults live in code): list name → value.
CREATE TABLE group_forms (
    group_id uuid PRIMARY KEY,
    lists jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(lists) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Pet owners, known at every clinic of their group. The *_key columns hold the normalised forms
-- duplicate detection compares; erasure clears them with the personal data.
CREATE TABLE clients (
    id uuid PRIMARY KEY,
    group_id uuid NOT NULL,
    registered_clinic_id uuid NOT NULL REFERENCES clinics (id),
    title text,
    first_name text,
    last_name text,
    email text,
    phone text,
    address_line1 text,
    address_line2 text,
    address_city text,
    address_region text,
    address_postcode text,
    address_country char(2),
    referral_source text,
    email_key text,
    phone_key text,
    first_name_key text,
    last_name_key text,
    postcode_key text,
    erased_at timestamptz,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT clients_named CHECK (
        erased_at IS NOT NULL OR (first_name IS NOT NULL AND last_name IS NOT NULL)
    ),
    CONSTRAINT clients_erased_clean CHECK (
        erased_at IS NULL OR (first_name IS NULL AND last_name IS NULL AND email IS NULL
                              AND phone IS NULL AND email_key IS NULL AND phone_key IS NULL
                              AND last_name_key IS NULL AND address_line1 IS NULL)
    ),
    -- Lets patients require that their client belongs to the same group.
    UNIQUE (group_id, id)
);
-- The duplicate rules themselves: one client per e-mail, and per phone with last name, in a
-- group. Two identical registrations racing each other cannot both commit.
CREATE UNIQUE INDEX clients_group_email_key ON clients (group_id, email_key);
CREATE UNIQUE INDEX clients_group_phone_name_key ON clients (group_id, phone_key, last_name_key);
CREATE INDEX clients_group_names ON clients (group_id, last_name_key, first_name_key);
CREATE INDEX clients_updated ON clients (group_id, updated_at, id);

CREATE TABLE patients (
    id uuid PRIMARY KEY,
    -- A client's pets read in the order they were given (one registration shares one now()).
    seq bigint GENERATED ALWAYS AS IDENTITY,
    group_id uuid NOT NULL,
    client_id uuid NOT NULL,
    name text,
    species text NOT NULL,
    breed text,
    sex text,
    date_of_birth date,
    neutered boolean,
    microchip text CHECK (microchip ~ '^[0-9]{15}$'),
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (group_id, client_id) REFERENCES clients (group_id, id)
);
CREATE INDEX patients_client ON patients (client_id, seq);
-- A microchip identifies one animal: never two patients with it in a group.
CREATE UNIQUE INDEX patients_group_microchip_key ON patients (group_id, microchip);

-- Consents as recorded, newest last: what was asked (the text shown) and the answer.
CREATE TABLE consents (
    id bigserial PRIMARY KEY,
    client_id uuid NOT NULL REFERENCES clients (id),
    code text NOT NULL,
    granted boolean NOT NULL,
    text text NOT NULL,
    clinic_id uuid NOT NULL,
    application_id uuid,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consents_client ON consents (client_id, code, id);

-- Create requests by Idempotency-Key: the same key and body give back the same resource.
CREATE TABLE create_requests (
    application_id uuid NOT NULL,
    clinic_id uuid NOT NULL,
    operation text NOT NULL CHECK (operation IN ('registration', 'patient')),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    client_id uuid NOT NULL REFERENCES clients (id),
    resource_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT create_requests_pkey
        PRIMARY KEY (application_id, clinic_id, operation, idempotency_key)
);
CREATE INDEX create_requests_client ON create_requests (client_id);
