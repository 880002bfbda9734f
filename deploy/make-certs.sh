#!/usr/bin/env bash
# Makes a certificate authority and a server certificate for a test deployment of
# allround-coordinator with TLS:
#   deploy/make-certs.sh DIR [NAME ...]
# writes DIR/ca.pem (give it to the sites: allround-worker --tls-ca DIR/ca.pem), DIR/ca.key (keep
# it), DIR/server.pem and DIR/server.key (allround-coordinator --tls-cert DIR/server.pem --tls-key
# DIR/server.key). The server certificate is valid for the NAMEs given (host names or IP
# addresses, default: localhost 127.0.0.1 ::1), for 30 days. For production, use certificates
# from your own CA.
set -euo pipefail
DIR="${1:?usage: make-certs.sh DIR [NAME ...]}"
shift
NAMES=("$@")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=(localhost 127.0.0.1 ::1)
command -v openssl > /dev/null || { echo "make-certs: openssl is missing (deploy/setup.sh installs it)" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"
umask 077
san=""
for n in "${NAMES[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san="${san%,}"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=allround test CA" \
  -keyout ca.key -out ca.pem 2> /dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${NAMES[0]}" -keyout server.key -out server.csr 2> /dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile server.ext \
  -out server.pem 2> /dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
# Keys are secrets: the coordinator refuses a key other users can read, as ssh does.
chmod 600 ca.key server.key
echo "make-certs: $DIR/ca.pem, $DIR/server.pem and $DIR/server.key for ${NAMES[*]}"
