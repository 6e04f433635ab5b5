-- The append-only event log: the single source of truth every projection is rebuilt from.
CREATE TABLE events (
    position  INTEGER PRIMARY KEY,   -- global, gapless, assigned by the single writer
    ts        REAL    NOT NULL,      -- wall clock seconds when the event was decided
    type      TEXT    NOT NULL,      -- past tense: component.failed, incident.resolved, ...
    component TEXT,
    incident  INTEGER,
    data      TEXT    NOT NULL       -- JSON object
);
CREATE INDEX events_by_incident ON events (incident) WHERE incident IS NOT NULL;
CREATE INDEX events_by_component ON events (component, position) WHERE component IS NOT NULL;

-- Append-only is enforced by the database, not by convention.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
