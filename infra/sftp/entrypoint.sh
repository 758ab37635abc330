#!/usr/bin/env bash
# Entrypoint of central's SFTP drop (infra/sftp/Dockerfile).
#
# /run/secrets/sftp_authorized_keys (mounted) lists the registered sites'
# public keys, one OpenSSH line each ("ssh-ed25519 AAAA... community-1").
# Each is accepted with `restrict` (no forwarding, no pty); a key not listed
# is refused, so revoking a site is removing its line and restarting.
# The host key is made on first start in /etc/ssh/keys (a volume) and its
# fingerprint logged: sites put it in their known-hosts file.
set -euo pipefail

log() { echo "[sftp] $*" >&2; }

register="${SFTP_AUTHORIZED_KEYS_FILE:-/run/secrets/sftp_authorized_keys}"
[ -s "$register" ] || { log "no site keys in $register: refusing to start"; exit 1; }

if [ ! -s /etc/ssh/keys/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/keys/ssh_host_ed25519_key
    log "made a new host key"
fi
log "host key: $(ssh-keygen -l -f /etc/ssh/keys/ssh_host_ed25519_key.pub)"

accepted=/etc/ssh/authorized_keys/site
grep -E '^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) ' "$register" \
    | sed 's/^/restrict /' > "$accepted.new"
chmod 0644 "$accepted.new"
mv "$accepted.new" "$accepted"
log "accepting $(wc -l < "$accepted") site keys"

# Volumes mounted over the image's folders start out root-owned.
chown root:root /srv/sftp
chmod 0755 /srv/sftp
chown site:site /srv/sftp/inbox /srv/sftp/receipts /srv/quarantine
chmod 0770 /srv/sftp/inbox /srv/sftp/receipts /srv/quarantine

exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
