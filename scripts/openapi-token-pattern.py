#!/usr/bin/env python3
"""Prints the regular expression of a read token (`Analytics-Token`, `after=`) for docs/openapi/*.yaml.

A token is base64url without padding of: the version byte 1, the partition (i32, big-endian, >= 0),
the offset (i64, big-endian, >= 0), then the events topic's name (1 to 249 bytes of
A-Z a-z 0-9 . _ -): common::engine::progress::ReadToken. The expression accepts exactly the
strings ReadToken::parse accepts (e2e/tests/contract.rs checks it against the parser).
"""

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ANY = set(range(256))
NONNEG_HIGH = set(range(0x80))  # the high byte of a non-negative big-endian integer
TOPIC = {ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"}


def cls(values):
    """A character class for a set of 6-bit values."""
    if len(values) == 64:
        return "[A-Za-z0-9_-]"
    chars = sorted(B64[v] for v in values)
    runs = []
    for c in chars:
        if runs and ord(c) == ord(runs[-1][-1]) + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    esc = lambda ch: "\\-" if ch == "-" else ch
    text = "".join(
        esc(r[0]) if len(r) == 1 else esc(r[0]) + esc(r[-1]) if len(r) == 2 else esc(r[0]) + "-" + esc(r[-1])
        for r in runs
    )
    if len(chars) == 1:
        return text
    return "[" + text + "]"


def group(sets):
    """The characters encoding bytes drawn from `sets` (3, or 1 or 2 for the last group, canonical: the
    unused low bits of the last character are zero), as alternatives: tuples of sets of 6-bit values."""
    n = len(sets)
    xs, ys, zs = sets[0], sets[1] if n > 1 else {0}, sets[2] if n > 2 else {0}
    result = []
    # Characters share bits across bytes: c1 = x&3 | y>>4, c2 = y&15 | z>>6.
    for a in range(4):
        c0 = frozenset(x >> 2 for x in xs if x & 3 == a)
        if not c0:
            continue
        if n == 1:
            result.append((c0, frozenset({a << 4})))
            continue
        for h in range(16):
            ys_h = [y for y in ys if y >> 4 == h]
            if not ys_h:
                continue
            c1 = frozenset({(a << 4) | h})
            if n == 2:
                result.append((c0, c1, frozenset((y & 15) << 2 for y in ys_h)))
                continue
            for q in range(4):
                zs_q = [z for z in zs if z >> 6 == q]
                if zs_q:
                    c2 = frozenset(((y & 15) << 2) | q for y in ys_h)
                    result.append((c0, c1, c2, frozenset(z & 63 for z in zs_q)))
    return merge(result)


def merge(options):
    """Unites alternatives that differ in one position, until none do."""
    options = set(options)
    changed = True
    while changed:
        changed = False
        items = sorted(options, key=lambda o: [sorted(s) for s in o])
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                diff = [k for k in range(len(a)) if a[k] != b[k]]
                if len(diff) == 1:
                    k = diff[0]
                    options -= {a, b}
                    options.add(a[:k] + (a[k] | b[k],) + a[k + 1 :])
                    changed = True
                    break
            if changed:
                break
    return options


def compact(options):
    rendered = sorted("".join(cls(s) for s in o) for o in options)
    return rendered[0] if len(rendered) == 1 else "(?:" + "|".join(rendered) + ")"


def main():
    head = [{1}, NONNEG_HIGH, ANY, ANY, ANY, NONNEG_HIGH, ANY, ANY, ANY, ANY, ANY, ANY]  # 12 bytes: 4 groups
    parts = []
    for i in range(0, 12, 3):
        parts.append(compact(group(head[i : i + 3])))
    prefix = "".join(parts)
    # Byte 12 (the offset's last) then the topic: 1 to 249 bytes.
    t = TOPIC
    g5_one = compact(group([ANY, t]))  # topic of 1 byte
    g5 = compact(group([ANY, t, t]))  # the first 2 topic bytes
    ttt = compact(group([t, t, t]))
    t1 = compact(group([t]))
    t2 = compact(group([t, t]))
    # After the first 2 topic bytes, m = n - 2 in 0..247 more: k full groups and a rest of r bytes, 3k + r <= 247.
    tail = f"(?:{ttt}){{0,81}}(?:{ttt}(?:{t1})?|{t1}|{t2})?"
    pattern = f"^{prefix}(?:{g5_one}|{g5}{tail})$"
    for k in range(12, 1, -1):
        pattern = pattern.replace("[A-Za-z0-9_-]" * k, f"[A-Za-z0-9_-]{{{k}}}")
    print(pattern)


main()
