-- Chorus document store, version 1.
--
-- One row per room that was ever written: its log's incarnation (bumped when
-- the room is deleted, so nodes holding positions in the old log notice) and
-- the last sequence number handed out (the per-room counter every append
-- advances inside its transaction).
CREATE TABLE chorus_rooms (
    room        text        PRIMARY KEY,
    incarnation bigint      NOT NULL DEFAULT 0,
    last_seq    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The update log: one Yjs v1 update per row, numbered from 1 per room and
-- incarnation, with when and (when known) by whom it was written.
CREATE TABLE chorus_updates (
    room       text        NOT NULL,
    seq        bigint      NOT NULL,
    data       bytea       NOT NULL,
    author     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, seq)
);

-- The latest snapshot of a room: the whole document as one Yjs v1 update,
-- covering the log up to `upto` (those rows are deleted with its write).
CREATE TABLE chorus_snapshots (
    room       text        PRIMARY KEY,
    upto       bigint      NOT NULL,
    doc        bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
