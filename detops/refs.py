"""References to versioned things: ``NAME@vN``, ``NAME@ALIAS`` or ``NAME`` (the latest).

>>> parse_ref("shapes@v3")
Ref(name='shapes', version=3, alias=None)
>>> parse_ref("det@production")
Ref(name='det', version=None, alias='production')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from detops.errors import InvalidReference

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
# versions are 32-bit INTEGER columns (PostgreSQL); a larger number would reach the database
# and fail there (SQLite: OverflowError) instead of being a clear reference error
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@v{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name):
        raise InvalidReference(
            f"{what} {name!r} is not valid: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, at most 200 characters)"
        )
    return name


def parse_ref(text: str) -> Ref:
    name, sep, tail = text.partition("@")
    check_name(name)
    if not sep:
        return Ref(name)
    if re.fullmatch(r"v[0-9]+", tail):
        digits = tail[1:].lstrip("0") or "0"
        if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
            raise InvalidReference(f"{text[:80]!r}: version too large (at most {MAX_VERSION})")
        return Ref(name, version=int(digits))
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{0,63}", tail):
        return Ref(name, alias=tail)
    raise InvalidReference(f"{text!r}: expected NAME@vN (e.g. {name}@v1) or NAME@ALIAS")
