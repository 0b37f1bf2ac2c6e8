"""Bearer-token authentication plugins: a TOML tokens file, and a fixed set of tokens.

Both are `goalkit_authenticate` plugins, registered like any other (``goalkit serve
--tokens FILE`` registers a `TokensFile`; with no file it registers a `StaticTokens` holding
the one admin token it generated):

```toml
[tokens]
"alice-secret" = { user = "alice" }
"root-secret" = { user = "root", admin = true }
```

Tokens are secrets. Nothing here logs one, puts one in an exception message, or keeps one
in memory longer than it takes to hash it: a file's errors name the entry by its line and
position, never by its token.

How a token is looked up, and why it takes constant time: each known token is kept only as
its SHA-256 digest, in a dict from digest to `Principal`. A presented token is hashed and the
digest looked up. Timing attacks on a string
comparison work by learning a prefix of the secret from how long a wrong guess takes; here
the comparisons run on digests, and a guess's digest shares no prefix with the secret's that
the attacker can steer (that would need a preimage attack on SHA-256), so the time taken says
nothing about the token. The alternative, `hmac.compare_digest` against every known token in
turn, is also safe but costs O(number of tokens) per request and keeps the plain tokens in
memory; the digest table costs O(1) per request and holds no token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from goalkit.errors import GoalkitError
from goalkit.hookspecs import hookimpl
from goalkit.models import MAX_OWNER_LENGTH, Principal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["TOKEN_SYNTAX", "StaticTokens", "TokensFile", "TokensFileError"]

log = logging.getLogger("goalkit.auth")

TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750 ``b64token``: what may follow "Bearer " in an Authorization header, so the only
tokens these plugins accept and the only ones the HTTP API reads."""
_ENTRY_KEYS = frozenset({"user", "admin"})


class TokensFileError(GoalkitError):
    """The tokens file is missing, is not TOML, or has an entry that breaks a rule.

    The message names the file and the entry (by line and position), never a token.
    """

    code = "tokens_file_error"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class _TokenTable:
    """Principals by the SHA-256 digest of their token (see the module docstring)."""

    def __init__(self, principals: Mapping[bytes, Principal]) -> None:
        self._principals = dict(principals)

    def __len__(self) -> int:
        return len(self._principals)

    def __repr__(self) -> str:
        # No token, no digest: only how many there are.
        return f"{type(self).__name__}({len(self)} token{'s' if len(self) != 1 else ''})"

    def lookup(self, token: str) -> Principal | None:
        """The principal of `token`, or None; the time taken does not depend on the token."""
        if not isinstance(token, str):
            return None
        # The dict compares digests, not tokens: see the module docstring.
        return self._principals.get(_digest(token))

    @hookimpl
    def goalkit_authenticate(self, token: str) -> Principal | None:
        """Return the principal of a known token, or None to let other plugins answer."""
        return self.lookup(token)


class StaticTokens(_TokenTable):
    """A fixed set of tokens given in code: ``StaticTokens({"tok": Principal("root", True)})``.

    `goalkit serve` uses it for the admin token it generates when no tokens file is given.
    Raises `ValueError` for an empty token or a value that is not a `Principal`.
    """

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        table: dict[bytes, Principal] = {}
        for position, (token, principal) in enumerate(tokens.items(), start=1):
            if not isinstance(token, str) or not TOKEN_SYNTAX.fullmatch(token):
                raise ValueError(
                    f"token {position} must be a non-empty string of letters, digits "
                    "and -._~+/ (optionally ending in =)"
                )
            if not isinstance(principal, Principal):
                raise ValueError(
                    f"token {position} must map to a Principal, not {type(principal).__name__}"
                )
            table[_digest(token)] = principal
        super().__init__(table)


class TokensFile(_TokenTable):
    """The tokens of a TOML file (``[tokens]`` table, see the module docstring).

    The file is read and checked once, when the object is made; edit it and restart to
    change the tokens. Raises `TokensFileError` naming the file and the entry at fault: the
    file missing or not TOML, no ``[tokens]`` table, an entry that is not a table, a missing
    or empty ``user``, an ``admin`` that is not ``true`` or ``false``, an unknown key, or an
    empty token. Logs a warning when other users may read the file.

    :param path: the tokens file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokensFileError(f"tokens file {str(self.path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokensFileError(
                f"cannot read tokens file {str(self.path)!r}: {type(exc).__name__}"
            ) from None
        _warn_if_shared(self.path)
        super().__init__(_parse(text, str(self.path)))

    def __repr__(self) -> str:
        return f"TokensFile({str(self.path)!r}, {len(self)} token{'s' if len(self) != 1 else ''})"


def _warn_if_shared(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "tokens file %s can be read by other users (mode %o); consider chmod 600",
            path,
            stat.S_IMODE(mode),
        )


def _parse(text: str, name: str) -> dict[bytes, Principal]:
    try:
        # tomllib's messages give a line and column, never the text found there.
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"{name}: not valid TOML: {exc}") from None
    tokens = document.get("tokens")
    if tokens is None:
        raise TokensFileError(f"{name}: no [tokens] table")
    if not isinstance(tokens, dict):
        raise TokensFileError(f"{name}: 'tokens' must be a table ([tokens])")
    others = sorted(set(document) - {"tokens"})
    if others:
        raise TokensFileError(
            f"{name}: unknown top-level key(s) {', '.join(map(repr, others))}; "
            "only [tokens] is read"
        )
    lines = text.splitlines()
    table: dict[bytes, Principal] = {}
    for position, (token, entry) in enumerate(tokens.items(), start=1):
        where = _where(name, lines, token, position)
        table[_digest(token)] = _principal(where, token, entry)
    return table


def _where(name: str, lines: list[str], token: str, position: int) -> str:
    """``FILE: line N, entry K of [tokens]``, to name an entry without printing its token."""
    line = None
    if token:
        # The line that defines the key: bare, quoted, or in a [tokens."…"] header.
        key = re.compile(r"""(?:^|[\s"'.\[])""" + re.escape(token) + r"""(?:["'\]]|\s*=)""")
        line = next((i for i, text in enumerate(lines, 1) if key.search(text)), None)
    at = f"line {line}, " if line is not None else ""
    return f"{name}: {at}entry {position} of [tokens]"


def _principal(where: str, token: str, entry: Any) -> Principal:
    if not token:
        raise TokensFileError(f"{where}: the token is empty")
    if not TOKEN_SYNTAX.fullmatch(token):
        raise TokensFileError(
            f"{where}: the token may hold only letters, digits and -._~+/ "
            "(optionally ending in =), as a bearer token must"
        )
    if not isinstance(entry, dict):
        raise TokensFileError(
            f'{where}: must be a table such as {{ user = "alice" }}, not a {_toml_type(entry)}'
        )
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise TokensFileError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            "an entry has 'user' and optionally 'admin'"
        )
    user = entry.get("user")
    if user is None:
        raise TokensFileError(f"{where}: missing 'user'")
    if not isinstance(user, str):
        raise TokensFileError(f"{where}: 'user' must be a string, not a {_toml_type(user)}")
    user = user.strip()
    if not user or len(user) > MAX_OWNER_LENGTH:
        raise TokensFileError(f"{where}: 'user' must be 1 to {MAX_OWNER_LENGTH} characters")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise TokensFileError(f"{where}: 'admin' must be true or false, not a {_toml_type(admin)}")
    return Principal(user=user, admin=admin)


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), type(value).__name__)
