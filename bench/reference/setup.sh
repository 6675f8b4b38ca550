#!/usr/bin/env bash
# Reference mail stack for benchmarking Mailfleet: Debian's Postfix and
# Dovecot, run as private instances from a state directory on unprivileged
# loopback ports. See README.md next to this file.
#
#   setup.sh up       install (when missing), configure, start; idempotent
#   setup.sh down     stop this stack's Postfix and Dovecot (only those)
#   setup.sh reset    stop, then delete all mail, queue and runtime state
#   setup.sh status   say whether each instance runs and listens
#   setup.sh pids     PIDs of the Postfix master and the Dovecot master
#
# Environment (defaults in brackets):
#   REF_DIR [<repo>/var/bench/reference]   state directory
#   REF_SMTP_PORT [12525] REF_IMAP_PORT [11143] REF_POP3_PORT [11110]
#   REF_DOMAIN [bench.test] REF_USERS [50] REF_PASSWORD [bench-password]
#   REF_VMAIL_USER [vmail]                 system user that owns the mail
#   REF_IMAP_PROCESS_LIMIT [12000]         imap and imap-login process_limit
#   REF_POP3_PROCESS_LIMIT [2000]          pop3 and pop3-login process_limit
#   REF_MAX_USERIP [20000]                 mail_max_userip_connections
#   REF_CLIENT_LIMIT [20000]               Dovecot default_client_limit
#   REF_PF_PROCESS_LIMIT [200]             Postfix default_process_limit
#   REF_PF_LMTP_CONCURRENCY [20]           Postfix lmtp_destination_concurrency_limit
#   REF_PASSWORD_SCHEME [ARGON2ID]         ARGON2ID (Mailfleet's cost), or
#                                          SHA512-CRYPT / PLAIN for runs that
#                                          must log in many sessions quickly
#   REF_NOFILE [65536]                     open-file limit for both masters
#                                          (capped at the hard limit)
#   REF_INOTIFY_INSTANCES [16384]          raise fs.inotify.max_user_instances
#                                          to at least this (0: leave it)
#   BENCH_TRASH [unset]                    reset moves mail and queue into this
#                                          directory (same filesystem) instead
#                                          of deleting them; see scripts/bench.sh
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)

REF_DIR=${REF_DIR:-$REPO_ROOT/var/bench/reference}
REF_SMTP_PORT=${REF_SMTP_PORT:-12525}
REF_IMAP_PORT=${REF_IMAP_PORT:-11143}
REF_POP3_PORT=${REF_POP3_PORT:-11110}
REF_DOMAIN=${REF_DOMAIN:-bench.test}
REF_USERS=${REF_USERS:-50}
REF_PASSWORD=${REF_PASSWORD:-bench-password}
REF_VMAIL_USER=${REF_VMAIL_USER:-vmail}
REF_IMAP_PROCESS_LIMIT=${REF_IMAP_PROCESS_LIMIT:-12000}
REF_POP3_PROCESS_LIMIT=${REF_POP3_PROCESS_LIMIT:-2000}
REF_MAX_USERIP=${REF_MAX_USERIP:-20000}
REF_CLIENT_LIMIT=${REF_CLIENT_LIMIT:-20000}
REF_PF_PROCESS_LIMIT=${REF_PF_PROCESS_LIMIT:-200}
REF_PF_LMTP_CONCURRENCY=${REF_PF_LMTP_CONCURRENCY:-20}
REF_PASSWORD_SCHEME=${REF_PASSWORD_SCHEME:-ARGON2ID}
REF_NOFILE=${REF_NOFILE:-65536}
REF_INOTIFY_INSTANCES=${REF_INOTIFY_INSTANCES:-16384}

# Argon2id cost used for the users' hashes: the argon2 crate's defaults,
# which is what Mailfleet stores (Argon2::default()).
ARGON2_M_KIB=19456
ARGON2_T=2
ARGON2_P=1

PACKAGES=(postfix dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd argon2 iproute2)

log() { echo "reference: $*" >&2; }
die() { echo "reference: error: $*" >&2; exit 1; }

# Absolute, normalised state directory; refuse anything that could be a
# system directory, because "reset" deletes inside it.
REF_DIR=$(realpath -m -- "$REF_DIR")
case "$REF_DIR" in
    / | /etc* | /usr* | /var | /var/spool* | /var/lib | /run* | /root | /home | /tmp | /work | /work/main)
        die "REF_DIR=$REF_DIR is not a dedicated state directory" ;;
esac

PF_CONF=$REF_DIR/postfix/etc
PF_SPOOL=$REF_DIR/postfix/spool
PF_DATA=$REF_DIR/postfix/data
DV_DIR=$REF_DIR/dovecot
DV_CONF=$DV_DIR/dovecot.conf
DV_USERS=$DV_DIR/users
DV_BASE=$REF_DIR/run/dovecot
MAIL_DIR=$REF_DIR/mail
LOG_DIR=$REF_DIR/log
MARKER=$REF_DIR/.mailfleet-reference-stack

require_root() { [ "$(id -u)" = 0 ] || die "run as root (Postfix and Dovecot masters start as root)"; }

check_settings() {
    local v
    for v in REF_SMTP_PORT REF_IMAP_PORT REF_POP3_PORT REF_USERS REF_IMAP_PROCESS_LIMIT \
             REF_POP3_PROCESS_LIMIT REF_MAX_USERIP REF_CLIENT_LIMIT REF_PF_PROCESS_LIMIT \
             REF_PF_LMTP_CONCURRENCY REF_NOFILE REF_INOTIFY_INSTANCES; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
    done
    [[ $REF_DOMAIN =~ ^[A-Za-z0-9.-]+$ ]] || die "REF_DOMAIN must be a plain domain name"
    [[ $REF_PASSWORD != *$'\n'* ]] || die "REF_PASSWORD must be one line"
    case "$REF_PASSWORD_SCHEME" in
        ARGON2ID | SHA512-CRYPT | PLAIN) ;;
        *) die "REF_PASSWORD_SCHEME must be ARGON2ID, SHA512-CRYPT or PLAIN" ;;
    esac
    # Unix socket paths are limited to 107 bytes; Dovecot's longest is
    # around base_dir + 30.
    [ ${#DV_BASE} -le 70 ] || die "REF_DIR is too long for Dovecot's socket paths (keep it under ~50 characters)"
}

# --- packages ---------------------------------------------------------------

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    log "installing: $(tr '\n' ' ' <<<"$missing")"
    # Postfix's debconf questions: answer "No configuration" so the package
    # writes no /etc/postfix/main.cf and starts nothing.
    debconf-set-selections <<EOF
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string mx.$REF_DOMAIN
EOF
    # Keep the packages' maintainer scripts from starting the system-wide
    # daemons (on ports 25/110/143/993/995). A policy-rc.d that already
    # exists is left as it is.
    local own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from mailfleet bench/reference/setup.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; then
        log "apt-get install failed; refreshing the package lists and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update -q || true
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing || rc=$?
    fi
    [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "package installation failed"
}

# If installing the packages (or anything else) started the system-wide
# instances, stop them: they would sit on the standard ports.
stop_system_instances() {
    local pid
    if [ -f /var/spool/postfix/pid/master.pid ]; then
        pid=$(tr -dc 0-9 </var/spool/postfix/pid/master.pid)
        if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = master ]; then
            log "stopping the system-wide Postfix (pid $pid)"
            postfix -c /etc/postfix stop 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 30 || true
        fi
    fi
    if [ -f /run/dovecot/master.pid ]; then
        pid=$(tr -dc 0-9 </run/dovecot/master.pid)
        if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dovecot ]; then
            log "stopping the system-wide Dovecot (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 30 || true
        fi
    fi
}

ensure_vmail_user() {
    if ! getent passwd "$REF_VMAIL_USER" >/dev/null; then
        log "creating system user $REF_VMAIL_USER"
        getent group "$REF_VMAIL_USER" >/dev/null || groupadd --system "$REF_VMAIL_USER"
        useradd --system --gid "$REF_VMAIL_USER" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "Mailfleet reference stack mail owner" "$REF_VMAIL_USER"
    fi
    VMAIL_UID=$(id -u "$REF_VMAIL_USER")
    VMAIL_GID=$(id -g "$REF_VMAIL_USER")
    VMAIL_GROUP=$(id -gn "$REF_VMAIL_USER")
}

# --- configuration ------------------------------------------------------------

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# render TEMPLATE OUTPUT: substitute @NAME@ placeholders; returns 0 when the
# output changed, 1 when it was already up to date.
render() {
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed -e "s|@REF_DIR@|$(sed_escape "$REF_DIR")|g" \
        -e "s|@DOMAIN@|$(sed_escape "$REF_DOMAIN")|g" \
        -e "s|@SMTP_PORT@|$REF_SMTP_PORT|g" \
        -e "s|@IMAP_PORT@|$REF_IMAP_PORT|g" \
        -e "s|@POP3_PORT@|$REF_POP3_PORT|g" \
        -e "s|@VMAIL_USER@|$(sed_escape "$REF_VMAIL_USER")|g" \
        -e "s|@VMAIL_GROUP@|$(sed_escape "$VMAIL_GROUP")|g" \
        -e "s|@VMAIL_UID@|$VMAIL_UID|g" \
        -e "s|@VMAIL_GID@|$VMAIL_GID|g" \
        -e "s|@IMAP_PROCESS_LIMIT@|$REF_IMAP_PROCESS_LIMIT|g" \
        -e "s|@POP3_PROCESS_LIMIT@|$REF_POP3_PROCESS_LIMIT|g" \
        -e "s|@MAX_USERIP@|$REF_MAX_USERIP|g" \
        -e "s|@CLIENT_LIMIT@|$REF_CLIENT_LIMIT|g" \
        -e "s|@PF_PROCESS_LIMIT@|$REF_PF_PROCESS_LIMIT|g" \
        -e "s|@PF_LMTP_CONCURRENCY@|$REF_PF_LMTP_CONCURRENCY|g" \
        -e "s|@PW_SCHEME@|$REF_PASSWORD_SCHEME|g" \
        "$1" >"$tmp"
    if grep -q '@[A-Z_0-9]*@' "$tmp"; then
        rm -f "$tmp"
        die "unreplaced placeholder in $1"
    fi
    if [ -f "$2" ] && cmp -s "$tmp" "$2"; then
        rm -f "$tmp"
        return 1
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$2"
    return 0
}

make_dirs() {
    install -d -m 755 -o root -g root "$REF_DIR" "$REF_DIR/postfix" "$PF_CONF" "$PF_SPOOL" \
        "$DV_DIR" "$REF_DIR/run" "$LOG_DIR"
    install -d -m 700 -o postfix -g postfix "$PF_DATA"
    install -d -m 750 -o root -g dovecot "$DV_DIR/state"
    install -d -m 750 -o "$REF_VMAIL_USER" -g "$VMAIL_GROUP" "$MAIL_DIR" "$MAIL_DIR/$REF_DOMAIN"
    [ -e "$MARKER" ] || echo "state directory of bench/reference/setup.sh; 'setup.sh reset' empties it" >"$MARKER"
}

# One password hash in Dovecot's {SCHEME}hash notation.
# shellcheck disable=SC2016 # the '$...$' patterns are literal on purpose
hash_password() {
    local salt hash
    case "$REF_PASSWORD_SCHEME" in
        ARGON2ID)
            # A 16-byte salt (12 random bytes as 16 base64 characters), the
            # same length as the argon2 crate's.
            salt=$(head -c 12 /dev/urandom | base64 -w0 | tr '+/' 'xy')
            hash=$(printf '%s' "$REF_PASSWORD" | argon2 "$salt" -id -t "$ARGON2_T" -k "$ARGON2_M_KIB" -p "$ARGON2_P" -e)
            [[ $hash == '$argon2id$'* ]] || die "argon2 produced no hash"
            echo "{ARGON2ID}$hash" ;;
        SHA512-CRYPT)
            hash=$(doveadm -c "$DV_CONF" pw -s SHA512-CRYPT -p "$REF_PASSWORD")
            [[ $hash == '{SHA512-CRYPT}$6$'* ]] || die "doveadm pw produced no hash"
            echo "$hash" ;;
        PLAIN)
            echo "{PLAIN}$REF_PASSWORD" ;;
    esac
}

# Users file for Dovecot and the recipient map for Postfix. Hashing is slow
# on purpose, so both are rebuilt only when one of their inputs changes.
write_users() {
    local stamp_file=$DV_DIR/users.stamp stamp
    stamp=$(printf '%s\n' "$REF_DOMAIN" "$REF_USERS" "$REF_PASSWORD" "$REF_PASSWORD_SCHEME" \
        "argon2id m=$ARGON2_M_KIB t=$ARGON2_T p=$ARGON2_P" | sha256sum | cut -d' ' -f1)
    if [ -f "$DV_USERS" ] && [ -f "$PF_CONF/virtual_mailboxes" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
        return 1
    fi
    if [ "$REF_PASSWORD_SCHEME" = ARGON2ID ]; then
        log "hashing passwords for $REF_USERS users (argon2id m=$ARGON2_M_KIB KiB, t=$ARGON2_T, p=$ARGON2_P)"
    else
        log "writing $REF_USERS users with $REF_PASSWORD_SCHEME passwords"
    fi
    local tmp_users tmp_map i hash
    tmp_users=$(mktemp "$DV_USERS.XXXXXX")
    tmp_map=$(mktemp "$PF_CONF/virtual_mailboxes.XXXXXX")
    trap 'rm -f "$tmp_users" "$tmp_map"' EXIT
    echo "# generated by setup.sh: name:{scheme}hash:uid:gid:gecos:home:shell:extra" >"$tmp_users"
    echo "# generated by setup.sh: recipients that Postfix accepts for $REF_DOMAIN" >"$tmp_map"
    for ((i = 1; i <= REF_USERS; i++)); do
        hash=$(hash_password) || exit 1
        echo "load$i@$REF_DOMAIN:$hash::::::" >>"$tmp_users"
        echo "load$i@$REF_DOMAIN OK" >>"$tmp_map"
    done
    chown root:dovecot "$tmp_users"
    chmod 640 "$tmp_users"
    chmod 644 "$tmp_map"
    mv -f "$tmp_users" "$DV_USERS"
    mv -f "$tmp_map" "$PF_CONF/virtual_mailboxes"
    trap - EXIT
    echo "$stamp" >"$stamp_file"
    return 0
}

# --- process helpers ------------------------------------------------------------

read_pid() { if [ -f "$1" ]; then tr -dc 0-9 <"$1"; fi; }

# pid of a running process whose comm is $2, read from pid file $1. A zombie
# does not count: the masters are reparented to pid 1 once they daemonize,
# and that may reap them a little later.
live_pid() {
    local pid
    pid=$(read_pid "$1")
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ] && ! is_zombie "$pid" && echo "$pid"
    return 0
}

is_zombie() { [ "$(sed -e 's/^.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f1)" = Z ]; }

postfix_pid() { live_pid "$PF_SPOOL/pid/master.pid" master; }
dovecot_pid() { live_pid "$DV_BASE/master.pid" dovecot; }

wait_gone() { # pid seconds
    local n=$(($2 * 10))
    while [ -d /proc/"$1" ] && [ "$n" -gt 0 ]; do
        is_zombie "$1" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    [ ! -d /proc/"$1" ]
}

listening() { # port: is something listening on 127.0.0.1:port?
    ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}' | grep -qx "127.0.0.1:$1"
}

wait_listening() { # port seconds
    local n=$(($2 * 10))
    until listening "$1"; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.1
    done
}

raise_limits() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$REF_NOFILE" ]; then
        ulimit -Hn "$REF_NOFILE" 2>/dev/null || true
        hard=$(ulimit -Hn)
    fi
    local want=$REF_NOFILE
    [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ] && want=$hard
    ulimit -n "$want"
    if [ "$want" -lt 12000 ]; then
        log "warning: open-file limit is only $want; ~10,000 IMAP connections need more"
    fi
    if [ "$REF_INOTIFY_INSTANCES" -gt 0 ] && [ -w /proc/sys/fs/inotify/max_user_instances ]; then
        local cur
        cur=$(cat /proc/sys/fs/inotify/max_user_instances)
        if [ "$cur" -lt "$REF_INOTIFY_INSTANCES" ]; then
            # Each IDLEing imap process (all run as one uid) takes an inotify
            # instance; with the kernel default of 128 Dovecot falls back to
            # polling the mailbox every 30 s.
            if echo "$REF_INOTIFY_INSTANCES" >/proc/sys/fs/inotify/max_user_instances 2>/dev/null; then
                log "raised fs.inotify.max_user_instances $cur -> $REF_INOTIFY_INSTANCES"
            else
                log "warning: could not raise fs.inotify.max_user_instances ($cur)"
            fi
        fi
    fi
}

# --- instances ------------------------------------------------------------------

start_dovecot() {
    local pid
    pid=$(dovecot_pid)
    if [ -n "$pid" ]; then
        if [ "$1" = changed ]; then
            log "Dovecot configuration changed; restarting"
            stop_dovecot
        else
            log "Dovecot already running (pid $pid)"
            return 0
        fi
    fi
    for port in "$REF_IMAP_PORT" "$REF_POP3_PORT"; do
        listening "$port" && die "127.0.0.1:$port is taken by another process"
    done
    doveconf -c "$DV_CONF" -n >/dev/null || die "Dovecot rejects $DV_CONF"
    # The master keeps whatever stdout/stderr it was started with; give it a
    # file, so that a caller reading our output through a pipe is not held.
    if ! dovecot -c "$DV_CONF" </dev/null >>"$LOG_DIR/dovecot-start.log" 2>&1; then
        tail -20 "$LOG_DIR/dovecot-start.log" >&2
        die "Dovecot failed to start; see $LOG_DIR/dovecot.log"
    fi
    if ! { wait_listening "$REF_IMAP_PORT" 20 && wait_listening "$REF_POP3_PORT" 20 && [ -S "$DV_BASE/lmtp" ]; }; then
        tail -20 "$LOG_DIR/dovecot.log" >&2
        die "Dovecot did not come up"
    fi
    log "Dovecot running (pid $(dovecot_pid)), imap 127.0.0.1:$REF_IMAP_PORT, pop3 127.0.0.1:$REF_POP3_PORT"
}

stop_dovecot() {
    local pid
    pid=$(dovecot_pid)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 90; then
        log "Dovecot master $pid ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || true
    fi
    log "Dovecot stopped"
}

start_postfix() {
    local pid
    pid=$(postfix_pid)
    if [ -n "$pid" ]; then
        if [ "$1" = changed ]; then
            log "Postfix configuration changed; restarting"
            stop_postfix
        else
            log "Postfix already running (pid $pid)"
            return 0
        fi
    fi
    listening "$REF_SMTP_PORT" && die "127.0.0.1:$REF_SMTP_PORT is taken by another process"
    postfix -c "$PF_CONF" check >/dev/null 2>&1 || postfix -c "$PF_CONF" check || die "postfix check failed"
    postfix -c "$PF_CONF" start || die "Postfix failed to start; see $LOG_DIR/postfix.log"
    wait_listening "$REF_SMTP_PORT" 20 || { tail -20 "$LOG_DIR/postfix.log" >&2; die "Postfix did not come up"; }
    log "Postfix running (pid $(postfix_pid)), smtp 127.0.0.1:$REF_SMTP_PORT"
}

stop_postfix() {
    local pid
    pid=$(postfix_pid)
    [ -n "$pid" ] || return 0
    postfix -c "$PF_CONF" stop 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 60; then
        log "Postfix master $pid did not stop; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || true
    fi
    # Its children exit on their own once the master is gone; wait for the
    # listener to close so that a following "up" can bind again.
    local n=100
    while listening "$REF_SMTP_PORT" && [ "$n" -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
    log "Postfix stopped"
}

# --- commands --------------------------------------------------------------------

cmd_up() {
    require_root
    check_settings
    install_packages
    stop_system_instances
    ensure_vmail_user
    make_dirs
    local pf_state=same dv_state=same
    render "$HERE/postfix-main.cf.in" "$PF_CONF/main.cf" && pf_state=changed
    render "$HERE/postfix-master.cf.in" "$PF_CONF/master.cf" && pf_state=changed
    render "$HERE/dovecot.conf.in" "$DV_CONF" && dv_state=changed
    # Dovecot re-reads the users file by itself; Postfix reads the texthash
    # map only when its processes start.
    write_users && pf_state=changed
    raise_limits
    # Dovecot first: Postfix delivers into its LMTP socket.
    start_dovecot "$dv_state"
    start_postfix "$pf_state"
    cmd_status
}

cmd_down() {
    require_root
    stop_postfix
    stop_dovecot
}

cmd_reset() {
    require_root
    cmd_down
    [ -d "$REF_DIR" ] || { log "nothing to reset ($REF_DIR does not exist)"; return 0; }
    [ -e "$MARKER" ] || die "$REF_DIR was not made by this script (no $(basename "$MARKER")); not deleting anything"
    if [ -n "${BENCH_TRASH:-}" ]; then
        # Renames free no inodes: see scripts/bench.sh on why deleting
        # thousands of files just before a measured run would skew it.
        local aside
        aside="$BENCH_TRASH/reference.$(date +%s%N)"
        mkdir -p "$aside"
        for d in "$MAIL_DIR" "$PF_SPOOL" "$PF_DATA"; do
            [ -e "$d" ] && mv -- "$d" "$aside/"
        done
    fi
    rm -rf -- "$MAIL_DIR" "$PF_SPOOL" "$PF_DATA" "$DV_DIR/state" "$REF_DIR/run" "$LOG_DIR"
    log "reset: mail, queue, runtime state and logs under $REF_DIR deleted (configuration kept)"
}

cmd_status() {
    local ok=0 pid port name
    pid=$(postfix_pid)
    if [ -n "$pid" ]; then
        echo "postfix: running, master pid $pid"
    else
        echo "postfix: not running"
        ok=1
    fi
    if listening "$REF_SMTP_PORT"; then
        echo "  smtp 127.0.0.1:$REF_SMTP_PORT listening"
    else
        echo "  smtp 127.0.0.1:$REF_SMTP_PORT not listening"
        ok=1
    fi
    pid=$(dovecot_pid)
    if [ -n "$pid" ]; then
        echo "dovecot: running, master pid $pid"
    else
        echo "dovecot: not running"
        ok=1
    fi
    for name in imap pop3; do
        if [ "$name" = imap ]; then port=$REF_IMAP_PORT; else port=$REF_POP3_PORT; fi
        if listening "$port"; then
            echo "  $name 127.0.0.1:$port listening"
        else
            echo "  $name 127.0.0.1:$port not listening"
            ok=1
        fi
    done
    if [ -S "$DV_BASE/lmtp" ] && [ -n "$pid" ]; then
        echo "  lmtp unix:$DV_BASE/lmtp"
    else
        echo "  lmtp socket absent"
        ok=1
    fi
    return $ok
}

cmd_pids() {
    local ok=0 pid
    pid=$(postfix_pid)
    if [ -n "$pid" ]; then echo "$pid"; else ok=1; fi
    pid=$(dovecot_pid)
    if [ -n "$pid" ]; then echo "$pid"; else ok=1; fi
    return $ok
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    pids) cmd_pids ;;
    *)
        echo "usage: $0 up|down|reset|status|pids" >&2
        exit 2
        ;;
esac
