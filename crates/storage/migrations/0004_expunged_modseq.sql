-- IMAP gateways ask after every command what changed since a MODSEQ
-- (messages and expunged UIDs alike); both lookups go by (mailbox, modseq).
CREATE INDEX expunged_mailbox_modseq ON expunged (mailbox_id, modseq);
