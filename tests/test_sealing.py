"""Private parts sealed with AES-256-GCM, bound to their row and KEK."""

from __future__ import annotations

import pytest

from keysvc.errors import UnsealError
from keysvc.sealing import SealedBlob, Sealer, format_kek, new_kek, parse_keks

SECRET = b'{"kty":"EC","d":"private"}'


def test_seal_then_unseal_returns_the_plaintext():
    sealer = Sealer((new_kek("k1"),))

    sealed = sealer.seal(SECRET, client_id="c", kid="kid1")

    assert sealed.kek_id == "k1"
    assert SECRET not in sealed.blob
    assert sealer.unseal(sealed, client_id="c", kid="kid1") == SECRET


def test_a_blob_moved_to_another_row_does_not_open():
    sealer = Sealer((new_kek("k1"),))
    sealed = sealer.seal(SECRET, client_id="c", kid="kid1")

    for client_id, kid in (("other", "kid1"), ("c", "kid2"), ("ck", "id1")):
        with pytest.raises(UnsealError) as caught:
            sealer.unseal(sealed, client_id=client_id, kid=kid)
        assert caught.value.kid == kid


def test_a_wrong_kek_does_not_open_and_says_so():
    sealed = Sealer((new_kek("k1"),)).seal(SECRET, client_id="c", kid="kid1")
    impostor = Sealer((new_kek("k1"),))

    with pytest.raises(UnsealError, match="does not open"):
        impostor.unseal(sealed, client_id="c", kid="kid1")


def test_an_unknown_kek_is_reported_by_kid():
    sealed = Sealer((new_kek("old"),)).seal(SECRET, client_id="c", kid="kid1")

    with pytest.raises(UnsealError, match=r"kid1.*'old'.*not configured"):
        Sealer((new_kek("new"),)).unseal(sealed, client_id="c", kid="kid1")


def test_a_blob_relabelled_with_another_kek_id_does_not_open():
    k1, k2 = new_kek("k1"), new_kek("k2")
    sealed = Sealer((k1, k2)).seal(SECRET, client_id="c", kid="kid1")
    relabelled = SealedBlob("k2", sealed.blob)

    with pytest.raises(UnsealError):
        Sealer((k1, k2)).unseal(relabelled, client_id="c", kid="kid1")


def test_the_first_kek_seals_and_every_kek_opens():
    old, new = new_kek("old"), new_kek("new")
    before = Sealer((old,)).seal(SECRET, client_id="c", kid="k")
    sealer = Sealer((new, old))

    rewrapped = sealer.rewrap(before, client_id="c", kid="k")

    assert sealer.unseal(before, client_id="c", kid="k") == SECRET
    assert rewrapped.kek_id == "new"
    assert Sealer((new,)).unseal(rewrapped, client_id="c", kid="k") == SECRET


def test_truncated_or_tampered_blobs_fail_cleanly():
    sealer = Sealer((new_kek("k1"),))
    sealed = sealer.seal(SECRET, client_id="c", kid="k")
    flipped = bytearray(sealed.blob)
    flipped[-1] ^= 1

    for blob in (b"", sealed.blob[:10], bytes(flipped), b"\x02" + sealed.blob[1:]):
        with pytest.raises(UnsealError):
            sealer.unseal(SealedBlob("k1", blob), client_id="c", kid="k")


def test_keks_round_trip_through_their_text_form():
    keks = (new_kek("a"), new_kek("b"))
    text = ",".join(format_kek(k) for k in keks)

    assert parse_keks(text) == keks
    assert parse_keks(text.replace(",", " , ")) == keks


@pytest.mark.parametrize(
    "text", ["", "a", "a:", "a:!!!!", "a:c2hvcnQ", "bad id:" + "A" * 43,
             "a:" + "A" * 43 + ",a:" + "B" * 43],
)  # fmt: skip
def test_bad_kek_text_is_refused(text):
    with pytest.raises(ValueError):
        parse_keks(text)


def test_kek_repr_hides_the_key():
    kek = new_kek("k1")

    assert format_kek(kek).split(":")[1] not in repr(kek)
    assert repr(kek.key) not in repr(kek)
