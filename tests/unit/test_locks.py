"""The one owner of inter-process locks: flock files (exclusive or shared, refused at once,
naming the holder) and the keys of PostgreSQL advisory locks. flock locks belong to an
open file, so two opens in one process exclude each other as two processes would."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.locks import LockHeld, advisory_key, file_lock


def refusal(path: Path, *, shared: bool = False) -> LockHeld:
    """Why ``path`` cannot be locked now (the test fails if it can)."""
    with pytest.raises(LockHeld) as refused, file_lock(path, shared=shared):
        pass
    return refused.value


def test_an_exclusive_lock_refuses_every_other(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with file_lock(path):
        assert refusal(path).path == path
        refusal(path, shared=True)
    with file_lock(path):  # released with its descriptor
        pass


def test_shared_locks_share_and_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with file_lock(path, shared=True), file_lock(path, shared=True):
        refusal(path)


def test_the_refused_are_told_what_the_holder_wrote(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with file_lock(path, holder=b'{"pid": 1}'):
        assert refusal(path).written == b'{"pid": 1}'
    with file_lock(path, holder=b"2"):  # the next holder's words replace the last one's
        assert refusal(path).written == b"2"


def test_a_refusal_becomes_the_callers_error_but_nothing_else_does(tmp_path: Path) -> None:
    path = tmp_path / "lock"

    def busy(held: LockHeld) -> Exception:
        return RuntimeError(f"busy: {held.path.name}")

    with (
        file_lock(path),
        pytest.raises(RuntimeError, match="busy: lock"),
        file_lock(path, refused=busy),
    ):
        pass
    other = LockHeld(tmp_path / "other")
    with pytest.raises(LockHeld) as raised, file_lock(path, refused=busy):
        raise other
    assert raised.value is other


def test_a_shared_lock_names_no_holder(tmp_path: Path) -> None:
    lock = file_lock(tmp_path / "lock", shared=True, holder=b"x")
    with pytest.raises(ValueError, match="shared"), lock:
        pass


def test_advisory_keys_are_stable_64_bit_and_namespaced() -> None:
    # The keys relays and projection writers lock: unchanged across releases, or a
    # process of one release would not see another's lock.
    assert advisory_key("relay:public.sales") == -3510222264332420818
    assert advisory_key("shipping") == -7008892393482945053
    assert -(2**63) <= advisory_key("x") < 2**63
    assert advisory_key("a") != advisory_key("b")
