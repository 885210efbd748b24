#!/bin/sh
# Turns secret files into environment variables, then runs the command given.
# For each NAME_FILE in the environment that names a file under /run/secrets/
# (where Docker and Compose mount secrets), NAME is set to that file's content,
# so that no secret value stands in a compose file or a container's
# configuration. Other *_FILE variables (SSL_CERT_FILE, ...) are left alone.
set -eu
for name in $(env | sed -n 's/^\([A-Z][A-Z0-9_]*\)_FILE=\/run\/secrets\/.*/\1/p'); do
  eval "file=\${${name}_FILE}"  # safe: the name matched [A-Z][A-Z0-9_]* above
  value="$(cat "$file")"
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
