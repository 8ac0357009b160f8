-- A counter per practitioner that moves with every change to what decides their availability,
-- so that computed availability can be kept and reused until the counter moves. Triggers keep
-- it, so no write path can forget to.
CREATE TABLE schedule_versions (
    practitioner_id uuid PRIMARY KEY,
    version         bigint NOT NULL
);

CREATE FUNCTION bump_schedule_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO schedule_versions (practitioner_id, version) VALUES (OLD.practitioner_id, 1)
        ON CONFLICT (practitioner_id)
        DO UPDATE SET version = schedule_versions.version + 1;
    END IF;
    IF TG_OP = 'INSERT'
       OR (TG_OP = 'UPDATE' AND NEW.practitioner_id IS DISTINCT FROM OLD.practitioner_id) THEN
        INSERT INTO schedule_versions (practitioner_id, version) VALUES (NEW.practitioner_id, 1)
        ON CONFLICT (practitioner_id)
        DO UPDATE SET version = schedule_versions.version + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER bookings_schedule_version
    AFTER INSERT OR UPDATE OR DELETE ON bookings
    FOR EACH ROW EXECUTE FUNCTION bump_schedule_version();
CREATE TRIGGER breaks_schedule_version
    AFTER INSERT OR UPDATE OR DELETE ON breaks
    FOR EACH ROW EXECUTE FUNCTION bump_schedule_version();
CREATE TRIGGER working_hours_schedule_version
    AFTER INSERT OR UPDATE OR DELETE ON working_hours
    FOR EACH ROW EXECUTE FUNCTION bump_schedule_version();
CREATE TRIGGER published_days_schedule_version
    AFTER INSERT OR UPDATE OR DELETE ON published_days
    FOR EACH ROW EXECUTE FUNCTION bump_schedule_version();
CREATE TRIGGER published_slots_schedule_version
    AFTER INSERT OR UPDATE OR DELETE ON published_slots
    FOR EACH ROW EXECUTE FUNCTION bump_schedule_version();
