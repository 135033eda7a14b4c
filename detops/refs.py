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
    if re.fullmatch(r"v\d+", tail):
        return Ref(name, version=int(tail[1:]))
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{0,63}", tail):
        return Ref(name, alias=tail)
    raise InvalidReference(f"{text!r}: expected NAME@vN (e.g. {name}@v1) or NAME@ALIAS")
