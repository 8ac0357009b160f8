-- The transactional outbox: events are written here in the business transaction and published
-- by the relay afterwards, so an event never leaves before its data and is never lost.
CREATE TABLE outbox (
    seq bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- Consumers record each event id they handled in the same transaction as its effects.
CREATE TABLE processed_events (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Per-aggregate event sequence numbers (booking, grant, ...), allocated in the same transaction.
CREATE TABLE event_sequences (
    aggregate text PRIMARY KEY,
    last_sequence bigint NOT NULL
);
