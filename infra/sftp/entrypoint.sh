#!/usr/bin/env bash
# Entrypoint of central's SFTP drop (infra/sftp/Dockerfile).
#
# /run/secrets/sftp_authorized_keys (mounted) is the register of site keys,
# one OpenSSH public key per line (as ssh-keygen writes it) with the site's
# node id appended as the last word:
#     ssh-ed25519 AAAA... root@site-server community-1
# Each site gets an account named after it, chrooted to /srv/sftp/<site>
# with inbox/ and receipts/<site>/, and accepts only its listed keys (with
# `restrict`). The register may be empty: then no site can log in. Adding or
# revoking a site is changing its lines and restarting; a revoked site's
# folder stays for the importer. The host key is made on first start in
# /etc/ssh/keys (a volume) and its fingerprint logged: sites put the key in
# their known-hosts file.
set -euo pipefail

log() { echo "[sftp] $*" >&2; }

register="${SFTP_AUTHORIZED_KEYS_FILE:-/run/secrets/sftp_authorized_keys}"
root=/srv/sftp
# A central with no site registered yet runs and accepts no logins;
# `compose/bin/provision register <site>` adds a key and restarts this service.
if [ ! -s "$register" ]; then
    log "no site keys in $register yet: no site can log in until one is registered"
fi

if [ ! -s /etc/ssh/keys/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/keys/ssh_host_ed25519_key
    log "made a new host key"
fi
log "host key: $(ssh-keygen -l -f /etc/ssh/keys/ssh_host_ed25519_key.pub)"

# sshd refuses a chroot with a parent that is not root's alone; volumes
# mounted over the image's folders start out with other owners.
chown root:root "$root"
chmod 0755 "$root"
chown 10001:10001 /srv/quarantine
chmod 0770 /srv/quarantine

rm -f /etc/ssh/authorized_keys/*
while read -r type key rest; do
    site="${rest##* }"
    case "$type" in
        ssh-ed25519 | ecdsa-sha2-nistp256 | ssh-rsa) ;;
        "" | \#*) continue ;;
        *) log "skipped a line that is not an OpenSSH public key"; continue ;;
    esac
    if ! [[ "${site:-}" =~ ^[a-z][a-z0-9-]{0,31}$ ]]; then
        log "skipped a key without a site name after it (got '${site:-}')"
        continue
    fi
    if ! id -u "$site" >/dev/null 2>&1; then
        useradd --uid 10001 --non-unique --gid sites --home-dir / --no-create-home \
            --shell /usr/sbin/nologin --password '*' "$site"
    fi
    mkdir -p "$root/$site/inbox" "$root/$site/receipts/$site"
    chown root:root "$root/$site" "$root/$site/receipts"
    chmod 0755 "$root/$site" "$root/$site/receipts"
    chown 10001:10001 "$root/$site/inbox" "$root/$site/receipts/$site"
    chmod 0770 "$root/$site/inbox" "$root/$site/receipts/$site"
    echo "restrict $type $key $site" >>"/etc/ssh/authorized_keys/$site"
done < <(cat "$register" 2>/dev/null || true)
chmod 0644 /etc/ssh/authorized_keys/* 2>/dev/null || true
log "accepting $(cat /etc/ssh/authorized_keys/* 2>/dev/null | wc -l) keys of" \
    "$(ls /etc/ssh/authorized_keys | wc -l) sites"

exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
