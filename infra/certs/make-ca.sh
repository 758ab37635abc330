#!/usr/bin/env bash
# make-ca.sh — the deployment's certificate authority and its nodes' server
# certificates, with the openssl CLI.
#
#   infra/certs/make-ca.sh                      the CA only
#   infra/certs/make-ca.sh NODE_ID [SAN ...]    the CA, then NODE_ID's certificate
#
# Writes under CA_DIR (default var/deployment/ca, gitignored):
#   ca.key, ca.crt                   the CA (EC P-256, 10 years); ca.crt is what
#                                    clients verify with (UPSTREAM_CA_FILE)
#   <NODE_ID>/tls.key, tls.crt       server certificate (2 years) for DNS:NODE_ID,
#                                    DNS:localhost, IP:127.0.0.1 and any extra SAN
#                                    ("DNS:name" or "IP:addr"; a bare word is DNS)
# Idempotent: an existing CA is kept; a node certificate is kept while the CA
# still verifies it and it covers the SANs asked for, else it is made again.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CA_DIR="${CA_DIR:-$REPO_ROOT/var/deployment/ca}"
CA_DAYS="${CA_DAYS:-3650}"
CERT_DAYS="${CERT_DAYS:-730}"

log() { echo "[make-ca] $*" >&2; }

make_ca() {
    if [ -s "$CA_DIR/ca.key" ] && [ -s "$CA_DIR/ca.crt" ]; then
        return
    fi
    mkdir -p "$CA_DIR"
    chmod 700 "$CA_DIR"
    log "creating the deployment CA in $CA_DIR"
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$CA_DIR/ca.key" 2>/dev/null)
    openssl req -x509 -new -key "$CA_DIR/ca.key" -sha256 -days "$CA_DAYS" \
        -subj "/O=collect-offline/CN=collect-offline deployment CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$CA_DIR/ca.crt"
    chmod 644 "$CA_DIR/ca.crt"
}

# A certificate is current when this CA verifies it and it names every SAN.
cert_is_current() {
    local crt="$1" sans="$2" have
    [ -s "$crt" ] || return 1
    openssl verify -CAfile "$CA_DIR/ca.crt" "$crt" >/dev/null 2>&1 || return 1
    have="$(openssl x509 -in "$crt" -noout -ext subjectAltName 2>/dev/null \
        | tail -n +2 | tr -d ' ' | sed 's/IPAddress:/IP:/g')"
    local san
    IFS=, read -ra wanted <<<"$sans"
    for san in "${wanted[@]}"; do
        [[ ",$have," == *",$san,"* ]] || return 1
    done
}

make_node_cert() {
    local node="$1" dir="$CA_DIR/$1" sans="DNS:$1,DNS:localhost,IP:127.0.0.1" san
    shift
    for san in "$@"; do
        [[ "$san" == *:* ]] || san="DNS:$san"
        sans="$sans,$san"
    done
    if cert_is_current "$dir/tls.crt" "$sans"; then
        return
    fi
    log "issuing a server certificate for $node ($sans)"
    mkdir -p "$dir"
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$dir/tls.key" 2>/dev/null)
    openssl req -new -key "$dir/tls.key" -subj "/O=collect-offline/CN=$node" \
        -out "$dir/tls.csr"
    # Python's ssl (3.13+ strict mode) wants the key identifiers and a SAN.
    openssl x509 -req -in "$dir/tls.csr" -CA "$CA_DIR/ca.crt" -CAkey "$CA_DIR/ca.key" \
        -CAcreateserial -sha256 -days "$CERT_DAYS" -out "$dir/tls.crt" \
        -extfile <(printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" \
            "authorityKeyIdentifier=keyid,issuer" \
            "subjectAltName=$sans") 2>/dev/null
    rm -f "$dir/tls.csr"
}

make_ca
if [ "$#" -gt 0 ]; then
    make_node_cert "$@"
fi
