#!/usr/bin/env bash
# `make load-promotions FILE=path.csv`: uploads a promotions CSV file as a new generation
# (POST /promotions/files, streamed: `curl -T` sends the file as it reads it, any size), prints the
# command's answer ({"generation": n}, or the one-line reason) and fails unless it is 202.
# COMMAND_URL (default http://localhost:8081) and API_TOKEN (when the command requires a token).
set -euo pipefail
FILE="${1:-}"
if [[ -z $FILE || ! -f $FILE ]]; then
  echo "usage: make load-promotions FILE=<path to a CSV file of id,price,expiration_date lines>" >&2
  exit 2
fi
URL="${COMMAND_URL:-http://localhost:8081}/promotions/files"
headers=(-H 'Content-Type: text/csv')
if [[ -n ${API_TOKEN:-} ]]; then headers+=(-H "Authorization: Bearer $API_TOKEN"); fi
answer="$(mktemp)"
trap 'rm -f "$answer"' EXIT
status="$(curl -sS -o "$answer" -w '%{http_code}' -X POST -T "$FILE" "${headers[@]}" "$URL")"
cat "$answer"
if [[ $status != 202 ]]; then
  echo "load-promotions: $URL answered $status" >&2
  exit 1
fi
