CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public;
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;

-- What bookings needs to know of a clinic: its zone (from the auth service's directory) and its
-- booking rules (owned here).
CREATE TABLE clinics (
    id uuid PRIMARY KEY,
    group_id uuid NOT NULL,
    time_zone text NOT NULL,
    slot_minutes integer NOT NULL DEFAULT 15 CHECK (slot_minutes BETWEEN 5 AND 240),
    min_lead_minutes integer NOT NULL DEFAULT 60 CHECK (min_lead_minutes BETWEEN 0 AND 10080),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE practitioners (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role text NOT NULL CHECK (role IN ('vet', 'nurse', 'other')),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Lets child tables require that their practitioner belongs to the same clinic.
    UNIQUE (clinic_id, id)
);
CREATE INDEX practitioners_updated ON practitioners (clinic_id, updated_at, id);

CREATE TABLE services (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    duration_minutes integer NOT NULL CHECK (duration_minutes BETWEEN 5 AND 1440),
    species text[],
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (clinic_id, id)
);
CREATE INDEX services_updated ON services (clinic_id, updated_at, id);

CREATE TABLE service_practitioners (
    clinic_id uuid NOT NULL,
    service_id uuid NOT NULL,
    practitioner_id uuid NOT NULL,
    PRIMARY KEY (service_id, practitioner_id),
    FOREIGN KEY (clinic_id, service_id) REFERENCES services (clinic_id, id) ON DELETE CASCADE,
    FOREIGN KEY (clinic_id, practitioner_id) REFERENCES practitioners (clinic_id, id)
);
CREATE INDEX service_practitioners_practitioner ON service_practitioners (practitioner_id);

CREATE TABLE insurances (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX insurances_updated ON insurances (clinic_id, updated_at, id);

-- A partner application's own ids for our resources, private to that application.
CREATE TABLE mappings (
    application_id uuid NOT NULL,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    resource_type text NOT NULL
        CHECK (resource_type IN ('practitioner', 'service', 'insurance', 'client', 'patient', 'booking')),
    external_id text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    resource_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, clinic_id, resource_type, external_id),
    CONSTRAINT mappings_one_external_id UNIQUE (application_id, clinic_id, resource_type, resource_id)
);

-- Weekly working hours in local clinic time.
CREATE TABLE working_hours (
    id bigserial PRIMARY KEY,
    clinic_id uuid NOT NULL,
    practitioner_id uuid NOT NULL,
    weekday smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),
    start_time time NOT NULL,
    end_time time NOT NULL,
    effective_from date NOT NULL,
    effective_to date,
    CHECK (end_time > start_time),
    CHECK (effective_to IS NULL OR effective_to >= effective_from),
    FOREIGN KEY (clinic_id, practitioner_id) REFERENCES practitioners (clinic_id, id)
);
CREATE INDEX working_hours_practitioner ON working_hours (practitioner_id);

-- A published local day replaces working hours for that day; its slots may be none (closed).
CREATE TABLE published_days (
    clinic_id uuid NOT NULL,
    practitioner_id uuid NOT NULL,
    day date NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (practitioner_id, day),
    FOREIGN KEY (clinic_id, practitioner_id) REFERENCES practitioners (clinic_id, id)
);

CREATE TABLE published_slots (
    practitioner_id uuid NOT NULL,
    day date NOT NULL,
    period tstzrange NOT NULL CHECK (NOT isempty(period)),
    FOREIGN KEY (practitioner_id, day) REFERENCES published_days (practitioner_id, day)
        ON DELETE CASCADE,
    CONSTRAINT published_slots_no_overlap
        EXCLUDE USING gist (practitioner_id WITH =, period WITH &&)
);

CREATE TABLE breaks (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL,
    practitioner_id uuid NOT NULL,
    period tstzrange NOT NULL CHECK (NOT isempty(period)),
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (clinic_id, practitioner_id) REFERENCES practitioners (clinic_id, id)
);
CREATE INDEX breaks_period ON breaks USING gist (practitioner_id, period);

CREATE TABLE bookings (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL,
    practitioner_id uuid NOT NULL,
    service_id uuid NOT NULL,
    period tstzrange NOT NULL CHECK (NOT isempty(period)),
    status text NOT NULL DEFAULT 'booked'
        CHECK (status IN ('booked', 'confirmed', 'arrived', 'completed', 'cancelled', 'no_show')),
    source text NOT NULL CHECK (source IN ('partner', 'clinic')),
    -- Made in the partner's own system and synchronised here: may lie outside availability.
    pushed boolean NOT NULL DEFAULT false,
    client_id uuid,
    patient_id uuid,
    prospect jsonb,
    insurance_id uuid,
    notes text,
    cancel_reason text,
    application_id uuid,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (clinic_id, practitioner_id) REFERENCES practitioners (clinic_id, id),
    FOREIGN KEY (clinic_id, service_id) REFERENCES services (clinic_id, id),
    CHECK (client_id IS NOT NULL OR prospect IS NOT NULL),
    -- The rule the whole product stands on: one practitioner, never two live bookings at once.
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (practitioner_id WITH =, period WITH &&)
        WHERE (status IN ('booked', 'confirmed', 'arrived'))
);
CREATE INDEX bookings_clinic_period ON bookings USING gist (clinic_id, period);
CREATE INDEX bookings_updated ON bookings (clinic_id, updated_at, id);

-- Create requests by Idempotency-Key: the same key and body give back the same booking.
CREATE TABLE booking_requests (
    application_id uuid NOT NULL,
    clinic_id uuid NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    booking_id uuid NOT NULL REFERENCES bookings (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, clinic_id, idempotency_key)
);

-- Clients and patients as seen for booking: a projection of the registrations service's events.
CREATE TABLE clients (
    id uuid PRIMARY KEY,
    group_id uuid NOT NULL,
    display_name text NOT NULL,
    email text,
    phone text,
    search text NOT NULL DEFAULT '',
    erased boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clients_group ON clients (group_id);
CREATE INDEX clients_search ON clients USING gin (search gin_trgm_ops);

CREATE TABLE patients (
    id uuid PRIMARY KEY,
    client_id uuid NOT NULL REFERENCES clients (id),
    name text NOT NULL,
    species text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_client ON patients (client_id);
