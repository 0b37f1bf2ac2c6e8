"""The bearer-token plugins: `TokensFile` (the TOML tokens file) and `StaticTokens`."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest

from goalkit import GoalManager, Principal
from goalkit.auth import StaticTokens, TokensFile, TokensFileError

SECRET = "alice-s3cr3t-Zq9"

GOOD = f"""
# who may call the HTTP API
[tokens]
"{SECRET}" = {{ user = "alice" }}
root-secret = {{ user = "root", admin = true }}
"bob.token" = {{ user = " bob ", admin = false }}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    path.chmod(0o600)
    return path


class TestTokensFile:
    """A valid tokens file maps each token to its principal, and nothing else."""

    def test_known_tokens(self, tmp_path: Path) -> None:
        """Each token answers with its user and admin flag; `user` is stripped."""
        tokens = TokensFile(write(tmp_path, GOOD))
        assert tokens.goalkit_authenticate(SECRET) == Principal("alice", admin=False)
        assert tokens.goalkit_authenticate("root-secret") == Principal("root", admin=True)
        assert tokens.goalkit_authenticate("bob.token") == Principal("bob", admin=False)
        assert len(tokens) == 3

    @pytest.mark.parametrize(
        "token", ["", "alice", SECRET[:-1], SECRET + "x", SECRET.upper(), " " + SECRET]
    )
    def test_unknown_tokens(self, tmp_path: Path, token: str) -> None:
        """A token that is not exactly a known one (prefix, suffix, case, space) is None."""
        assert TokensFile(write(tmp_path, GOOD)).goalkit_authenticate(token) is None

    def test_repr_holds_no_token(self, tmp_path: Path) -> None:
        """repr names the file and a count, never a token."""
        tokens = TokensFile(write(tmp_path, GOOD))
        assert SECRET not in repr(tokens)
        assert "3 tokens" in repr(tokens)

    def test_no_plain_token_kept(self, tmp_path: Path) -> None:
        """The object keeps digests only: no attribute holds a token."""
        tokens = TokensFile(write(tmp_path, GOOD))
        assert SECRET not in repr(vars(tokens))

    def test_empty_table(self, tmp_path: Path) -> None:
        """An empty [tokens] table is valid and lets nobody in."""
        tokens = TokensFile(write(tmp_path, "[tokens]\n"))
        assert len(tokens) == 0
        assert tokens.goalkit_authenticate("anything") is None

    @pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
    def test_warns_when_others_can_read(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A file other users may read is loaded, with a warning that does not show tokens."""
        path = write(tmp_path, GOOD)
        path.chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="goalkit.auth"):
            TokensFile(path)
        assert "chmod 600" in caplog.text
        assert SECRET not in caplog.text


class TestTokensFileErrors:
    """A bad tokens file fails at load with a message naming the entry, never its token."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f'[tokens]\n"{SECRET}" = "alice"\n', "line 2, entry 1 of [tokens]: must be a table"),
            (f'[tokens]\nok = {{ user = "a" }}\n"{SECRET}" = {{ admin = true }}\n', "line 3, entry 2 of [tokens]: missing 'user'"),
            (f'[tokens]\n"{SECRET}" = {{ user = "" }}\n', "'user' must be 1 to 200 characters"),
            (f'[tokens]\n"{SECRET}" = {{ user = 7 }}\n', "'user' must be a string, not a integer"),
            (f'[tokens]\n"{SECRET}" = {{ user = "a", admin = "yes" }}\n', "line 2, entry 1 of [tokens]: 'admin' must be true or false, not a string"),
            (f'[tokens]\n"{SECRET}" = {{ user = "a", admn = true }}\n', "unknown key(s) 'admn'"),
            ('[tokens]\n"" = { user = "a" }\n', "entry 1 of [tokens]: the token is empty"),
            (f'[tokens]\n"{SECRET} x" = {{ user = "a" }}\n', "the token may hold only"),
            (f'[tokens.{SECRET}]\nuser = "a"\nadmin = 1\n', "line 1, entry 1 of [tokens]: 'admin' must be true or false, not a integer"),
            ("tokens = 3\n", "'tokens' must be a table"),
            ("[users]\n", "no [tokens] table"),
            ('[tokens]\n[other]\nx = 1\n', "unknown top-level key(s) 'other'"),
            (f'[tokens]\n"{SECRET}" = {{ user = "a"\n', "not valid TOML: Unclosed inline table (at line 2"),
            (f'[tokens]\n"{SECRET}" = {{ user = "a" }}\n"{SECRET}" = {{ user = "b" }}\n', "not valid TOML: Cannot overwrite a value (at line 3"),
        ],
    )  # fmt: skip
    def test_bad_file(self, tmp_path: Path, text: str, expected: str) -> None:
        """Each rule broken gives its own message, with the file name and no token."""
        path = write(tmp_path, text)
        with pytest.raises(TokensFileError) as info:
            TokensFile(path)
        message = str(info.value)
        assert expected in message
        assert message.startswith(f"{path}: ")
        assert SECRET not in message
        assert info.value.__suppress_context__ or info.value.__context__ is None

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is an error naming it."""
        with pytest.raises(TokensFileError, match="does not exist"):
            TokensFile(tmp_path / "nope.toml")

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is an error, without its bytes."""
        path = tmp_path / "tokens.toml"
        path.write_bytes(b'[tokens]\n"\xff\xfe" = { user = "a" }\n')
        with pytest.raises(TokensFileError, match=r"cannot read tokens file .*UnicodeDecodeError"):
            TokensFile(path)


class TestStaticTokens:
    """`StaticTokens` serves tokens given in code, as the generated admin token is."""

    def test_lookup(self) -> None:
        """Known tokens give their principal; others None."""
        tokens = StaticTokens({"tok-1": Principal("root", admin=True)})
        assert tokens.goalkit_authenticate("tok-1") == Principal("root", admin=True)
        assert tokens.goalkit_authenticate("tok-2") is None
        assert "tok-1" not in repr(tokens)

    @pytest.mark.parametrize("token", ["", "has space", "ünïcode"])
    def test_rejects_bad_token(self, token: str) -> None:
        """A token no Authorization header could carry is a ValueError without the token."""
        with pytest.raises(ValueError, match="token 1 must be") as info:
            StaticTokens({token: Principal("a")})
        assert not token or token not in str(info.value)

    def test_rejects_non_principal(self) -> None:
        """A value that is not a Principal is a ValueError."""
        with pytest.raises(ValueError, match="must map to a Principal"):
            StaticTokens({"tok": "root"})  # type: ignore[dict-item]


class TestThroughTheManager:
    """The plugins answer `GoalManager.authenticate` like any `goalkit_authenticate` plugin."""

    @pytest.mark.anyio
    async def test_first_answer_wins(self, tmp_path: Path) -> None:
        """A tokens file and static tokens together: each token finds its principal."""
        plugins = [
            TokensFile(write(tmp_path, GOOD)),
            StaticTokens({"gen": Principal("admin", True)}),
        ]
        async with GoalManager("memory://", plugins=plugins, entry_points=False) as manager:
            assert await manager.authenticate(SECRET) == Principal("alice")
            assert await manager.authenticate("gen") == Principal("admin", admin=True)
            assert await manager.authenticate("nope") is None

    def test_listed_as_plugins(self, tmp_path: Path) -> None:
        """Both register into a plugin manager without unknown-hook errors."""
        from goalkit.plugins import make_plugin_manager

        pm = make_plugin_manager(
            [TokensFile(write(tmp_path, GOOD)), StaticTokens({})], entry_points=False
        )
        names = [impl.plugin_name for impl in pm.hook.goalkit_authenticate.get_hookimpls()]
        assert len(names) == 2
