-- One delivery target in one round trip (storage's Deliver, see
-- crates/storage/src/messages/deliver.rs): the checks, the new UID and
-- MODSEQ, the message row, the usage counters and the delivery key happen
-- in the single statement that calls this function, so they commit
-- together or not at all. Lock order as everywhere: the blob row (shared:
-- a sweep takes it exclusively), the account row, then the mailbox row.
CREATE FUNCTION mailfleet_deliver(
    p_key text,
    p_account bigint,
    p_mailbox text,
    p_blob text,
    p_prefix bytea,
    p_date timestamptz,
    p_flags text[],
    OUT o_status text,
    OUT o_mailbox_id bigint,
    OUT o_uid bigint,
    OUT o_modseq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_blob_size bigint;
    v_parsed boolean;
    v_disabled boolean;
    v_quota bigint;
    v_used bigint;
    v_size bigint;
BEGIN
    SELECT d.mailbox_id, d.uid INTO o_mailbox_id, o_uid FROM deliveries d WHERE d.delivery_key = p_key;
    IF FOUND THEN
        o_status := 'duplicate';
        RETURN;
    END IF;
    SELECT b.size, b.header_size IS NOT NULL INTO v_blob_size, v_parsed
        FROM blobs b WHERE b.id = p_blob FOR SHARE;
    IF NOT FOUND THEN
        o_status := 'no_blob';
        RETURN;
    END IF;
    IF NOT v_parsed THEN
        o_status := 'unparsed';
        RETURN;
    END IF;
    SELECT a.disabled, a.quota_bytes, a.used_bytes INTO v_disabled, v_quota, v_used
        FROM accounts a WHERE a.id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        o_status := 'no_account';
        RETURN;
    END IF;
    -- Deliveries with the same key to one account serialise on the account
    -- lock: a concurrent one may have committed meanwhile.
    SELECT d.mailbox_id, d.uid INTO o_mailbox_id, o_uid FROM deliveries d WHERE d.delivery_key = p_key;
    IF FOUND THEN
        o_status := 'duplicate';
        RETURN;
    END IF;
    IF v_disabled THEN
        o_status := 'disabled';
        RETURN;
    END IF;
    v_size := v_blob_size + octet_length(p_prefix);
    IF v_quota > 0 AND v_used + v_size > v_quota THEN
        o_status := 'over_quota';
        RETURN;
    END IF;
    UPDATE mailboxes m SET uid_next = m.uid_next + 1, highest_modseq = m.highest_modseq + 1
        WHERE m.account_id = p_account AND m.name = p_mailbox
        RETURNING m.id, m.uid_next - 1, m.highest_modseq INTO o_mailbox_id, o_uid, o_modseq;
    IF NOT FOUND THEN
        o_status := 'no_mailbox';
        RETURN;
    END IF;
    -- RFC 3501 §2.3.1.1: UIDs are 32-bit.
    IF o_uid > 4294967295 THEN
        RAISE EXCEPTION 'mailbox has run out of UIDs; recreate it' USING ERRCODE = 'MF001';
    END IF;
    INSERT INTO messages (account_id, mailbox_id, uid, modseq, blob_id, header_prefix, size, internal_date, flags)
        VALUES (p_account, o_mailbox_id, o_uid, o_modseq, p_blob, p_prefix, v_size, p_date, p_flags);
    UPDATE accounts a SET used_bytes = greatest(a.used_bytes + v_size, 0),
        message_count = greatest(a.message_count + 1, 0)
        WHERE a.id = p_account;
    INSERT INTO deliveries (delivery_key, account_id, mailbox_id, uid)
        VALUES (p_key, p_account, o_mailbox_id, o_uid);
    o_status := 'delivered';
END
$$;
