"""The tokens file (serving/online/tokens.py) and the client's token file
(serving/credentials.py): format, lookups, reloads, and messages that never show a token."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from serving.credentials import read_token
from serving.errors import UsageError
from serving.online.tokens import EVERYTHING, Grant, TokenTable, parse_tokens

A, B, C = (secrets.token_urlsafe(24) for _ in range(3))


def test_a_token_alone_may_call_everything_and_a_list_limits_it() -> None:
    text = f"""
# a comment line
{A}
   {B}\teta, pricing   # trailing comment
{C} push,features
"""
    entries = parse_tokens(text, "tokens")
    assert [e.line for e in entries] == [3, 4, 5]
    assert entries[0].grant == EVERYTHING
    assert entries[1].grant == Grant(frozenset({"eta", "pricing"}))
    assert entries[2].grant.allows("push")
    assert entries[2].grant.allows("features")
    assert not entries[2].grant.allows("eta")
    assert all(A not in repr(e) and B not in repr(e) for e in entries)  # digests only


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("short", "line 1: a token of fewer than 16 characters"),
        (f"{A[:8]}#{A[8:]}", "line 1: a token of fewer than 16"),  # '#' starts a comment
        (f"{A}é", "line 1: not a bearer token"),
        (f"{A} eta pricing", "line 1: name 1 of its list is no model name"),
        (f"{A} eta,", "line 1: name 2 of its list"),
        (f"{A} eta,Pricing", "line 1: name 2 of its list"),
    ],
    ids=["short", "comment", "not-ascii", "spaces", "empty-name", "capitals"],  # no random ids
)
def test_a_bad_line_is_named_by_number_and_never_quoted(line: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_tokens(line, "tokens")
    message = str(info.value)
    assert needle in message
    assert A not in message
    assert A[:8] not in message


def test_a_repeated_token_names_both_lines() -> None:
    with pytest.raises(UsageError, match=r"tokens line 3 repeats the token of line 1") as info:
        parse_tokens(f"{A}\n{B}\n{A} eta\n", "tokens")
    assert A not in str(info.value)


def test_a_lookup_finds_the_grant_of_the_token_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{A}\n{B} eta\n")
    table = TokenTable(path)
    assert table.grant(A) == EVERYTHING
    assert table.grant(B) == Grant(frozenset({"eta"}))
    for other in (C, A[:-1], A + "x", "", B.upper()):
        assert table.grant(other) is None
    assert table.describe() == "2 tokens (1 limited to some models)"
    assert table.unknown_names({"eta"}) == []
    path.write_text(f"{A} eta, etaa, push\n")
    table.reload()
    assert table.unknown_names({"eta"}) == [1]


def test_a_file_without_tokens_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n")
    with pytest.raises(UsageError, match="holds no token"):
        TokenTable(path)
    with pytest.raises(UsageError, match="no such file"):
        TokenTable(tmp_path / "missing")


def test_reload_takes_a_valid_change_and_keeps_the_last_good_table_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "tokens"
    path.write_text(f"{A}\n")
    table = TokenTable(path)
    assert table.reload() is False  # unchanged
    path.write_text(f"{A}\n{B[:5]}\n")  # line 2 too short
    assert table.reload() is False
    assert table.reload() is False  # the same refusal is logged once
    assert caplog.text.count("line 2: a token of fewer than 16") == 1
    assert table.grant(A) == EVERYTHING
    path.unlink()
    assert table.reload() is False
    assert table.grant(A) == EVERYTHING
    path.write_text(f"{B}\n")
    assert table.reload() is True
    assert table.grant(A) is None
    assert table.grant(B) == EVERYTHING
    path.write_text("")  # revoke everything: taken, with a warning
    assert table.reload() is True
    assert table.grant(B) is None
    assert "holds no token now" in caplog.text
    assert all(token not in caplog.text for token in (A, B, B[:5]))


def test_the_client_reads_the_first_token_of_its_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"# mine\n\n  {A}  eta\n{B}\n")
    assert read_token(path) == A
    path.write_text("# none\n")
    with pytest.raises(UsageError, match="holds no token"):
        read_token(path)
    path.write_text("too-short\n")
    with pytest.raises(UsageError, match="line 1: a token of fewer than 16") as info:
        read_token(path)
    assert "too-short" not in str(info.value)
    with pytest.raises(UsageError, match="no such file"):
        read_token(tmp_path / "missing")
