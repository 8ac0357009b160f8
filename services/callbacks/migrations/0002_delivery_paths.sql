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
