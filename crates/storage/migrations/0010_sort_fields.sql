-- SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO) order by
-- values derived from each blob's header (storage/src/sortkeys.rs): base
-- subject, first From/To/Cc mailbox and display name (mapped for the
-- i;ascii-casemap collation, compared with COLLATE "C"), sent date in UTC,
-- and the msg-ids threading links by.
--
-- New blobs get them when their metadata is recorded. Blobs stored before
-- this migration have them NULL (sort_version NULL) and get them the first
-- time a SORT or THREAD touches a mailbox holding them, computed from the
-- envelope and header text already in the row: no blob file is read, and
-- this migration rewrites no existing row (ADD COLUMN without a default is
-- instant). `sort_version` older than the code's also triggers a
-- recomputation, so a change of the extraction needs no data migration.
ALTER TABLE blobs
    ADD COLUMN sort_version     SMALLINT,
    ADD COLUMN base_subject     TEXT,
    ADD COLUMN subject_is_reply BOOLEAN,
    ADD COLUMN sort_from        TEXT,
    ADD COLUMN sort_to          TEXT,
    ADD COLUMN sort_cc          TEXT,
    ADD COLUMN display_from     TEXT,
    ADD COLUMN display_to       TEXT,
    ADD COLUMN sent_at          TIMESTAMPTZ,
    ADD COLUMN message_id       TEXT,
    -- Space-separated msg-ids, oldest first (msg-ids hold no whitespace).
    ADD COLUMN thread_refs      TEXT;
