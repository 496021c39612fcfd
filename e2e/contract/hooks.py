"""Schemathesis hooks for the contract run (e2e/tests/contract.rs).

Read-your-writes (`after`, `wait_ms` on every query route): a schema-valid token names a
write this deployment most likely never made, so the answer is 503 once `wait_ms` has
passed (up to 30 s each). The hook shortens a valid wait to at most 200 ms, and sends half
of the valid tokens as the token of a real write (`CONTRACT_TOKEN`, made by the test before
the run), so the answers after a reflected write are checked too. Invalid tokens and waits
are sent as generated: they must get 400.

The horizon: `POST /analytics` counts an event only if its time lies within the horizon
around the command's clock (7 days back, 5 minutes ahead), a bound that moves with the
clock and which a static schema cannot state: a generated time is almost never in it
(422). The hook moves a schema-valid time into the last 6 days (keeping it distinct per
generated value), so valid events are recorded (204, with their `Analytics-Token`). An
invalid time (negative, too large, not a number) is sent as generated: it must get 400.

User ids: the limit is 256 bytes of UTF-8, and a schema counts characters (`maxLength`
256). A schema-valid id longer than 256 bytes (many characters beyond ASCII) is cut to
its first 256 bytes; a longer one (more than 256 characters) is sent as generated.

Ranges: one rule of docs/openapi/query.yaml relates two parameters, which a JSON Schema cannot
state: a range's `from` must be before its `to`, and a time series holds at most 1000
buckets. Without help nearly every generated range breaks it (400), so the 200 answers
would never be checked against their schemas. This hook turns a generated range whose
bounds are both valid on their own into a valid range (same `from`, a `to` after it and
close enough). A case made invalid on purpose elsewhere (a bad `interval`, an unknown
parameter, a malformed `after`) stays invalid; a bound that is itself invalid (negative,
not a number, not on an hour for the aggregate) is left alone.

Answers: a key is at most 256 bytes of UTF-8 and a value at most 65536 (64 KiB), and a
schema counts characters. A schema-valid key (in the body of `POST /answers` or in the path
of `/answers/{key}`) or value longer than its limit in bytes is cut to its first bytes, as
user ids are; one already invalid (too many characters, a control character) is sent as
generated (a positive case's key is also freed of the control characters schemathesis' own
path encoding can make of a `%XY` in the generated text). Ids: a write whose (key, id) was decided answers the first outcome, whatever happened to the
key since (a create retried after a delete answers `201` again, and the key stays deleted), and
generated ids repeat (`0`, `a`) across requests; a valid id gets its method and a number unique
in the run as a suffix, so no two requests share one (retries by id are tested in
e2e/tests/answers.rs, where they are meant).

Widgets: serials are at most 128 bytes of UTF-8 and names at most 256, and a schema counts
characters: a schema-valid serial (in a body, or a path's `serial` and `other`) or name longer
than its limit in bytes is cut to its first bytes, as answer keys are (a positive case's path
serials also freed of control characters); ids get a unique suffix, as on the answers' writes.

Promotions: `POST /promotions/files` takes any string as its body (`text/csv`), but only a file
of valid `id,price,expiration_date` lines, each id once, is accepted (202); nearly every
generated string has a malformed line (400). A positive case's body is kept if it is such a
file, else replaced by 1 to 3 valid lines derived from it (distinct ids), so the 202 answer is
checked too. A negative case (a body that is not a string) is sent as generated: it must get
400.
"""

import itertools
import os
import pathlib
import re
import time
import uuid
import zlib
from urllib.parse import quote, unquote

import schemathesis
import yaml

HOUR_MS = 3_600_000
I64_MAX = 2**63 - 1
# Ranges up to 30 days: under the 1000 hourly buckets of a time series, and cheap to aggregate.
LONGEST_MS = 30 * 24 * HOUR_MS
RANGE_PATHS = {"/analytics/timeseries", "/analytics/aggregate"}


def _int(value):
    """A query value as the integer it reads as on the wire (some phases build them as text), else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _bound(value, step):
    """The bound as an int if it is valid on its own (what the schema says), else None."""
    value = _int(value)
    if value is None:
        return None
    if not 0 <= value <= I64_MAX or value % step:
        return None
    return value


def valid_range(path, query):
    if path not in RANGE_PATHS or not isinstance(query, dict):
        return query
    step = HOUR_MS if path.endswith("aggregate") else 1
    start, end = _bound(query.get("from"), step), _bound(query.get("to"), step)
    if start is None or end is None:
        return query
    length = max(step, min(abs(end - start), LONGEST_MS) // step * step)
    if start + length > I64_MAX:
        start = (I64_MAX - length) // step * step
    return {**query, "from": start, "to": start + length}


# Well inside the default horizon (7 days back), whatever the run's duration.
RECENT_MS = 6 * 24 * HOUR_MS


USER_MAX_BYTES = 256


def valid_event(method, path, query):
    if (method.upper(), path) != ("POST", "/analytics") or not isinstance(query, dict):
        return query
    user = query.get("user")
    if isinstance(user, str) and len(user) <= USER_MAX_BYTES and len(user.encode()) > USER_MAX_BYTES:
        query = {**query, "user": user.encode()[:USER_MAX_BYTES].decode(errors="ignore")}
    timestamp = _bound(query.get("timestamp"), 1)
    if timestamp is None:
        return query
    now_ms = time.time_ns() // 1_000_000
    return {**query, "timestamp": now_ms - timestamp % RECENT_MS}


ANSWERS_PREFIX = "/answers"
KEY_MAX_BYTES = 256
VALUE_MAX_BYTES = 65_536
ID_MAX_BYTES = 128
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _cut(text, max_bytes, need_chars):
    """A schema-valid string (at most `max_bytes` characters; without control characters if
    `need_chars`) cut to its first `max_bytes` bytes of UTF-8; anything else as it is."""
    if not isinstance(text, str) or len(text) > max_bytes or len(text.encode()) <= max_bytes:
        return text
    if need_chars and CONTROL.search(text):
        return text
    return text.encode()[:max_bytes].decode(errors="ignore")


_IDS = itertools.count()


def valid_answer(method, path, path_parameters, query, body, positive=False):
    if not path.startswith(ANSWERS_PREFIX):
        return path_parameters, query, body
    if isinstance(path_parameters, dict) and isinstance(path_parameters.get("key"), str):
        # Path parameters arrive percent-encoded: cut the key itself, then encode it again.
        key = unquote(path_parameters["key"])
        if positive and CONTROL.search(key):
            # Schemathesis encodes a path parameter by decoding it first, so a generated key
            # holding the text `%C2%8E` reaches the service as U+008E: a valid key sent as an
            # invalid one. Drop what the wire made of it.
            key = CONTROL.sub("", key) or "k"
        key = _cut(key, KEY_MAX_BYTES, True)
        path_parameters = {**path_parameters, "key": quote(key, safe="")}
    if isinstance(body, dict):
        body = dict(body)
        if "key" in body:
            body["key"] = _cut(body["key"], KEY_MAX_BYTES, True)
        if "value" in body:
            body["value"] = _cut(body["value"], VALUE_MAX_BYTES, False)
    if isinstance(query, dict) and isinstance(query.get("id"), str) and ID.match(query["id"]):
        suffix = f"-{method.lower()}-{os.getpid()}-{next(_IDS)}"
        ident = query["id"]
        if len(ident) <= ID_MAX_BYTES:
            query = {**query, "id": ident[: ID_MAX_BYTES - len(suffix)] + suffix}
    return path_parameters, query, body


WIDGETS_PREFIX = "/widgets"
SERIAL_MAX_BYTES = 128
NAME_MAX_BYTES = 256


def _unique_id(method, query):
    """A valid `id` with its method and a number unique in the run as a suffix, so no two requests share one."""
    if isinstance(query, dict) and isinstance(query.get("id"), str) and ID.match(query["id"]):
        suffix = f"-{method.lower()}-{os.getpid()}-{next(_IDS)}"
        ident = query["id"]
        if len(ident) <= ID_MAX_BYTES:
            query = {**query, "id": ident[: ID_MAX_BYTES - len(suffix)] + suffix}
    return query


def valid_widget(method, path, path_parameters, query, body, positive=False):
    if not path.startswith(WIDGETS_PREFIX):
        return path_parameters, query, body
    if isinstance(path_parameters, dict):
        path_parameters = dict(path_parameters)
        for name in ("serial", "other"):
            if isinstance(path_parameters.get(name), str):
                serial = unquote(path_parameters[name])
                if positive and CONTROL.search(serial):
                    serial = CONTROL.sub("", serial) or "s"
                path_parameters[name] = quote(_cut(serial, SERIAL_MAX_BYTES, True), safe="")
    if isinstance(body, dict):
        body = dict(body)
        for name in ("serial", "with"):
            if name in body:
                body[name] = _cut(body[name], SERIAL_MAX_BYTES, True)
        if "name" in body:
            body["name"] = _cut(body["name"], NAME_MAX_BYTES, True)
    return path_parameters, _unique_id(method, query), body


PROMOTIONS_FILES = "/promotions/files"
# A valid line, day at most 28 (any month has it): what the upload accepts, kept as generated.
PROMOTION_LINE = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12},"
    r"[0-9]{1,15}(?:\.[0-9]+)?,"
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8]) (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] "
    r"[+-](?:[01][0-9]|2[0-3])[0-5][0-9] [A-Za-z0-9+-]{1,8}\r?$"
)


def _valid_file(text):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ids = [line.split(",", 1)[0].lower() for line in lines]
    return bool(lines) and all(PROMOTION_LINE.match(line) for line in lines) and len(set(ids)) == len(ids)


def valid_promotions(method, path, body, positive):
    """A positive case's body of `POST /promotions/files` (any string, to the schema) as a file the
    upload accepts (202): kept if it is one, else 1 to 3 valid lines derived from it, distinct ids."""
    if (method.upper(), path) != ("POST", PROMOTIONS_FILES) or not positive or not isinstance(body, str):
        return body
    if _valid_file(body):
        return body
    seed = zlib.crc32(body.encode(errors="replace"))
    lines = []
    for i in range(1 + seed % 3):
        ident = uuid.uuid5(uuid.NAMESPACE_OID, f"{body!r}:{i}")
        lines.append(f"{ident},{seed % 100000}.{i:02d}5,2018-08-{1 + (seed + i) % 28:02d} 05:32:31 +0200 CEST\n")
    return "".join(lines)


SPEC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "openapi" / "query.yaml"
TOKEN = re.compile(yaml.safe_load(SPEC.read_text())["components"]["parameters"]["After"]["schema"]["pattern"])
REAL_TOKEN = os.environ.get("CONTRACT_TOKEN")
LONGEST_WAIT_MS = 200


def _valid_wait(value):
    value = _int(value)
    return value is not None and 0 <= value <= 30_000


def short_waits(query):
    if not isinstance(query, dict):
        return query
    token = query.get("after")
    if not isinstance(token, str) or not TOKEN.search(token):
        return query
    wait = query.get("wait_ms", 5_000)
    if not _valid_wait(wait):
        return query
    query = {**query, "wait_ms": min(_int(wait), LONGEST_WAIT_MS)}
    if REAL_TOKEN and zlib.crc32(token.encode()) % 2 == 0:
        query["after"] = REAL_TOKEN
    return query


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Every phase (examples, coverage, fuzzing) goes through here, just before the request is sent."""
    path = case.operation.path
    case.query = short_waits(valid_range(path, valid_event(case.method, path, case.query)))
    meta = getattr(case, "meta", None)
    positive = bool(meta is not None and meta.generation.mode.is_positive)
    path_parameters, query, body = valid_answer(case.method, path, case.path_parameters, case.query, case.body, positive)
    path_parameters, query, body = valid_widget(case.method, path, path_parameters, query, body, positive)
    body = valid_promotions(case.method, path, body, positive)
    # Only what changed: schemathesis checks a changed case against the schema again, and it
    # checks a path parameter as encoded (`%C2%87` passes a pattern that refuses U+0087).
    if path_parameters != case.path_parameters:
        case.path_parameters = path_parameters
    if query != case.query:
        case.query = query
    if body != case.body:
        case.body = body
