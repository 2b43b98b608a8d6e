#!/usr/bin/env bash
# A private CA and a SuperLink server certificate signed by it, for Flower's TLS (docs/DEPLOYMENT.md).
#
#   scripts/generate-certs.sh [--force] [--san NAME_OR_IP]... [OUTPUT_DIR]
#
# OUTPUT_DIR (default ./certificates) receives:
#   ca.crt      the CA certificate: every SuperNode (--root-certificates) and every `flwr` user
#               (root-certificates in $FLWR_HOME/config.toml) trusts the SuperLink through it
#   ca.key      the CA's private key: keep it off the nodes, it signs new server certificates
#   server.pem  the SuperLink's certificate (flower-superlink --ssl-certfile), signed by ca.crt
#   server.key  its private key (--ssl-keyfile)
# The server certificate names `superlink` (the docker-compose service), `localhost` and 127.0.0.1
# (the SuperLink's own SuperExec connects to 127.0.0.1 when it binds 0.0.0.0), plus every --san and
# every comma-separated entry of $FEDSHIELD_CERT_SANS: IPv4/IPv6 addresses become IP names, the rest
# DNS names. Existing certificates are never overwritten unless --force is given.
#
# Modelled on Flower's examples (flower-authentication/generate_cert.sh, certificate.conf); fine
# for a research federation, not a substitute for an organisation's PKI.
set -euo pipefail

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

force=0
out_dir=./certificates
extra_names=()
IFS=',' read -r -a env_names <<<"${FEDSHIELD_CERT_SANS:-}"
extra_names+=("${env_names[@]}")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) force=1 ;;
    --san)
      [[ $# -ge 2 ]] || usage
      extra_names+=("$2")
      shift
      ;;
    --san=*) extra_names+=("${1#--san=}") ;;
    -h | --help) usage ;;
    -*) echo "generate-certs.sh: unknown option $1" >&2; usage ;;
    *) out_dir=$1 ;;
  esac
  shift
done
days=${FEDSHIELD_CERT_DAYS:-365}

files=(ca.crt ca.key server.pem server.key)
existing=()
for file in "${files[@]}"; do
  [[ -e "$out_dir/$file" ]] && existing+=("$out_dir/$file")
done
if [[ ${#existing[@]} -gt 0 && $force -eq 0 ]]; then
  echo "generate-certs.sh: refusing to overwrite ${existing[*]} (pass --force to replace them)" >&2
  exit 1
fi

# subjectAltName entries: the fixed names first, then the extra ones (deduplicated, blanks dropped).
dns_names=(superlink localhost)
ip_names=(127.0.0.1)
for name in "${extra_names[@]}"; do
  name=${name//[[:space:]]/}
  [[ -n "$name" ]] || continue
  if [[ "$name" =~ ^[0-9]+(\.[0-9]+){3}$ || "$name" == *:* ]]; then
    [[ " ${ip_names[*]} " == *" $name "* ]] || ip_names+=("$name")
  else
    [[ " ${dns_names[*]} " == *" $name "* ]] || dns_names+=("$name")
  fi
done
alt_names=""
for i in "${!dns_names[@]}"; do alt_names+="DNS.$((i + 1)) = ${dns_names[$i]}"$'\n'; done
for i in "${!ip_names[@]}"; do alt_names+="IP.$((i + 1)) = ${ip_names[$i]}"$'\n'; done

mkdir -p "$out_dir"
# Build everything in a scratch folder beside the output, then move it in: never a half-written set.
work=$(mktemp -d "$out_dir/.generate-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 077

# The extensions Python's ssl needs under VERIFY_X509_STRICT (the default from Python 3.13, which
# Flower's Docker images run): a critical CA basicConstraints, key usages and key identifiers.
cat >"$work/openssl.conf" <<CONF
[req]
prompt = no
distinguished_name = dn

[dn]
O = fedshield
CN = superlink

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt_names

[alt_names]
$alt_names
CONF

openssl genrsa -out "$work/ca.key" 4096 2>/dev/null
openssl req -new -x509 -sha256 -days "$days" -key "$work/ca.key" -subj "/O=fedshield/CN=fedshield federation CA" \
  -config "$work/openssl.conf" -extensions ca_ext -out "$work/ca.crt"
openssl genrsa -out "$work/server.key" 4096 2>/dev/null
openssl req -new -sha256 -key "$work/server.key" -config "$work/openssl.conf" -out "$work/server.csr"
openssl x509 -req -sha256 -days "$days" -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -extfile "$work/openssl.conf" -extensions server_ext \
  -out "$work/server.pem" 2>/dev/null
openssl verify -CAfile "$work/ca.crt" "$work/server.pem" >/dev/null

chmod 644 "$work/ca.crt" "$work/server.pem"
for file in "${files[@]}"; do
  mv -f "$work/$file" "$out_dir/$file"
done

echo "Wrote $out_dir/{ca.crt,ca.key,server.pem,server.key} (valid $days days)"
echo "SuperLink names: DNS ${dns_names[*]}; IP ${ip_names[*]}"
