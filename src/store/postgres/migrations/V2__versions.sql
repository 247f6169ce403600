-- Chorus document store, version 2: version history (see src/store/history.rs).
--
-- One row per version of a room: its metadata, the document's state vector
-- at that version, and its update: the whole document when `full_state`,
-- else a delta from the previous version's state vector. Deleting a version
-- merges its update into the next one's.
CREATE TABLE chorus_versions (
    room          text     NOT NULL,
    id            bigint   NOT NULL,
    created_ms    bigint   NOT NULL,
    name          text,
    kind          smallint NOT NULL,
    restored_from bigint,
    -- JSON array of {"user", "name"}.
    authors       text     NOT NULL DEFAULT '[]',
    sv            bytea    NOT NULL,
    full_state    boolean  NOT NULL,
    data          bytea    NOT NULL,
    PRIMARY KEY (room, id)
);

-- The last version id handed out per room: ids are never reused, even after
-- the latest version is deleted.
CREATE TABLE chorus_version_ids (
    room    text   PRIMARY KEY,
    last_id bigint NOT NULL
);
