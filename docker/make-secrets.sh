#!/bin/sh
# Write the secrets docker/compose.yaml reads, once, as files in docker/secrets/ (git-ignored).
# Existing files are kept (re-running never rotates a secret under a running database).
# The directory is 0700 (only you); the files are 0644 so the containers' non-root users
# (inventiv 10001, grafana 472) can read their bind-mounted copy.
#   sh docker/make-secrets.sh [DIR]     (DIR defaults to docker/secrets next to this script)
#   POSTGRES_PORT=5433 sh docker/make-secrets.sh   (the port written into database_url)
set -eu
dir=${1:-$(dirname "$0")/secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random() {
    # 32 random bytes, URL-safe (no character that needs escaping in a URL or a shell)
    head -c 32 /dev/urandom | base64 | tr -d '\n=+/' | cut -c1-40
}

put() {  # put NAME VALUE: create DIR/NAME unless it exists
    if [ ! -s "$dir/$1" ]; then
        printf '%s' "$2" > "$dir/$1"  # no newline: some readers keep it
        chmod 644 "$dir/$1"
        echo "wrote $dir/$1"
    fi
}

for name in postgres_password jwt_secret admin_password ray_token grafana_admin_password; do
    put "$name" "$(random)"
done
# Service tokens carry the public "ist-" prefix the control API issues them with.
put service_token "ist-$(random)"
# The control API's database URL carries the Postgres password: derived, never typed twice.
put database_url "postgresql://inventiv:$(cat "$dir/postgres_password")@127.0.0.1:${POSTGRES_PORT:-5432}/inventiv"
