-- The applications that may see a clinic's events of a type: the auth service's rule (a direct
-- grant on the clinic, or a grant on its group when the clinic is of the application's
-- environment; never a suspended application), read from the clinic's side. Fan-out asks it
-- once per event, so an event costs the clinic's audience, not every endpoint of every partner,
-- and may_see asks it too, so the rule is written once.
CREATE INDEX grants_by_clinic ON grants (clinic_id) WHERE NOT revoked AND clinic_id IS NOT NULL;
CREATE INDEX grants_by_group ON grants (group_id) WHERE NOT revoked AND group_id IS NOT NULL;

CREATE FUNCTION audience(clinic uuid, event_type text) RETURNS TABLE (application_id uuid)
LANGUAGE sql STABLE AS $$
    SELECT g.application_id
    FROM grants g
    JOIN applications a ON a.application_id = g.application_id
    WHERE g.clinic_id = clinic
      AND NOT g.revoked
      AND a.status <> 'suspended'
      AND g.scopes && event_scopes(event_type)
    UNION
    SELECT g.application_id
    FROM clinics c
    JOIN grants g ON g.group_id = c.group_id
    JOIN applications a ON a.application_id = g.application_id
    WHERE c.clinic_id = clinic
      AND NOT g.revoked
      AND a.status <> 'suspended'
      AND g.scopes && event_scopes(event_type)
      AND c.sandbox = (a.environment = 'sandbox')
$$;

CREATE OR REPLACE FUNCTION may_see(app uuid, clinic uuid, event_type text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM audience(clinic, event_type) x WHERE x.application_id = app)
$$;

-- Claiming reads first attempts and retries through an index each, in due order, so that
-- finding an endpoint's due deliveries stops at the first one not yet due however long its
-- queue of later retries.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_first_due ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND attempts = 0;
CREATE INDEX deliveries_retry_due ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND attempts > 0;

-- A delivery names its endpoint without a foreign key. Checking it took a share lock on the
-- endpoint's row for every delivery written, and with many events fanned out at once to the
-- same endpoints those locks were a third of the fan-out's cost and slowed every write to the
-- endpoint. Deleting an endpoint deletes its deliveries in the same statement; a delivery
-- fanned out in the same instant can outlive it, is never attempted (only existing, enabled
-- endpoints are claimed) and goes with its event when the event is purged.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_endpoint_id_fkey;

-- The PULL feed reads an application's events through entries of its own, written as each event
-- is kept for the applications that may see it then: a page costs the application's events, not
-- every clinic's. Reading still asks may_see, so a grant revoked since hides what it showed.
CREATE TABLE feed_entries (
    application_id  uuid NOT NULL,
    txid            xid8 NOT NULL,
    seq             bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    PRIMARY KEY (application_id, txid, seq)
);
CREATE INDEX feed_entries_by_event ON feed_entries (seq);

-- Who an event is for: the application it is addressed to, or those that may see its clinic.
CREATE FUNCTION readers(addressed uuid, clinic uuid, event_type text)
RETURNS TABLE (application_id uuid)
LANGUAGE sql STABLE AS $$
    SELECT addressed WHERE addressed IS NOT NULL
    UNION ALL
    SELECT x.application_id FROM audience(clinic, event_type) x
    WHERE addressed IS NULL AND clinic IS NOT NULL
$$;

-- A trigger rather than the intake's own statement, so that events kept by copies of the
-- service still running the code from before this migration get their entries too.
CREATE FUNCTION add_feed_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_entries (application_id, txid, seq)
    SELECT r.application_id, NEW.txid, NEW.seq
    FROM readers(NEW.application_id, NEW.clinic_id, NEW.event_type) r;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_feed_entries AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION add_feed_entries();

INSERT INTO feed_entries (application_id, txid, seq)
SELECT r.application_id, ev.txid, ev.seq
FROM events ev CROSS JOIN LATERAL readers(ev.application_id, ev.clinic_id, ev.event_type) r;
DROP INDEX events_feed;

-- Intake of one partner event in one round trip: kept (with its feed entries), its resource's
-- gap-free mark moved on, and one delivery made per enabled endpoint of its readers that
-- subscribed to it.
-- Returns how many deliveries were made; 0 for an event kept already. PL/pgSQL because each
-- statement here must see what other transactions committed before it started (a function's
-- statements each take a fresh snapshot), which one statement of CTEs would not.
CREATE FUNCTION keep_event(
    p_event_id uuid, p_type text, p_clinic uuid, p_application uuid, p_aggregate text,
    p_sequence bigint, p_occurred_at timestamptz, p_body text, p_gap_seconds float8
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_contiguous bigint;
    v_made integer;
    v_readers uuid[];
BEGIN
    INSERT INTO events (event_id, event_type, clinic_id, application_id, aggregate, sequence,
                        occurred_at, body)
    VALUES (p_event_id, p_type, p_clinic, p_application, p_aggregate, p_sequence,
            p_occurred_at, p_body)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq INTO v_seq;
    IF v_seq IS NULL THEN
        RETURN 0;
    END IF;

    IF p_aggregate IS NOT NULL THEN
        -- The row lock serialises two events of one resource, and each later statement sees
        -- what the other committed, so the mark never stops short of an event that has
        -- arrived. A gap that has kept an event waiting longer than p_gap_seconds (events from
        -- before this service listened, or lost) is given up on.
        INSERT INTO aggregates (aggregate, contiguous) VALUES (p_aggregate, 0)
        ON CONFLICT (aggregate) DO UPDATE SET aggregate = EXCLUDED.aggregate
        RETURNING contiguous INTO v_contiguous;
        IF p_sequence > v_contiguous
           AND (p_sequence = v_contiguous + 1
                OR EXISTS (SELECT 1 FROM events e
                           WHERE e.aggregate = p_aggregate AND e.sequence > v_contiguous
                             AND e.received_at < now() - make_interval(secs => p_gap_seconds)))
        THEN
            WITH RECURSIVE run(n) AS (
                SELECT p_sequence
                UNION ALL
                SELECT run.n + 1 FROM run
                WHERE EXISTS (SELECT 1 FROM events e
                              WHERE e.aggregate = p_aggregate AND e.sequence = run.n + 1)
            )
            UPDATE aggregates SET contiguous = greatest(contiguous, (SELECT max(n) FROM run))
            WHERE aggregate = p_aggregate;
        END IF;
    END IF;

    -- Its readers, as the insert's trigger has just written their feed entries.
    v_readers := ARRAY(SELECT f.application_id FROM feed_entries f WHERE f.seq = v_seq);

    INSERT INTO deliveries (id, endpoint_id, event_seq, event_id, event_type, aggregate,
                            sequence)
    SELECT gen_random_uuid(), e.id, v_seq, p_event_id, p_type, p_aggregate, p_sequence
    FROM unnest(v_readers) readers (application_id)
    JOIN endpoints e ON e.application_id = readers.application_id AND e.enabled
        AND (e.event_types IS NULL OR p_type = ANY (e.event_types))
        AND (p_application IS NOT NULL OR e.clinic_ids IS NULL
             OR p_clinic = ANY (e.clinic_ids))
    ON CONFLICT (endpoint_id, event_id) DO NOTHING;
    GET DIAGNOSTICS v_made = ROW_COUNT;
    RETURN v_made;
END
$$;
