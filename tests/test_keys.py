"""Key material: policies, generation, the public export and the import checks."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk, jws

from keysvc import keys
from keysvc.errors import InvalidKey, InvalidPolicy, KeysvcError

# Written out here rather than imported, so the tests do not trust the module.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
REQUIRED_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
EXPECTED_TYPES = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
}
# RFC 7638, section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxu"
    "hDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN"
    "5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
    "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBni"
    "Iqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rfc7638_thumbprint(members: dict[str, Any]) -> str:
    """RFC 7638 by hand: the required members, sorted, no whitespace, SHA-256."""
    required = {name: members[name] for name in REQUIRED_MEMBERS[members["kty"]]}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"))

    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def bare(public: dict[str, Any]) -> dict[str, Any]:
    """A public JWK as a client might bring it: kty and key members only."""
    return {name: public[name] for name in REQUIRED_MEMBERS[public["kty"]]}


def rsa_jwk(bits: int) -> dict[str, Any]:
    """A public RSA JWK of any size, made with cryptography so keysvc's limits pass."""
    numbers = rsa.generate_private_key(65537, bits).public_key().public_numbers()

    return {"kty": "RSA", "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}


@pytest.fixture(scope="module")
def generated() -> dict[str, keys.GeneratedKey]:
    """One key of every algorithm, RSA at 2048 bits."""
    return {alg: keys.generate_key(keys.key_spec(alg)) for alg in keys.SIGNING_ALGS}


def test_signing_algs_are_the_ones_the_design_names() -> None:
    assert set(keys.SIGNING_ALGS) == set(EXPECTED_TYPES)
    assert keys.RSA_KEY_SIZES == (2048, 3072, 4096)


@pytest.mark.parametrize("alg", sorted(EXPECTED_TYPES))
def test_key_type_names_kty_and_curve(alg: str) -> None:
    assert keys.key_type(alg) == EXPECTED_TYPES[alg]


@pytest.mark.parametrize("alg", ["HS256", "none", "rs256", "RSA-OAEP", ""])
def test_key_type_refuses_a_non_signing_alg(alg: str) -> None:
    with pytest.raises(InvalidPolicy):
        keys.key_type(alg)


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_every_algorithm_generates_a_key_of_its_type(alg: str) -> None:
    key = keys.generate_key(keys.key_spec(alg))

    private = keys.load_private_key(key.private_jwk)
    kty, crv = EXPECTED_TYPES[alg]
    assert private.has_private
    assert private["kty"] == kty
    assert private.get("crv") == crv
    assert key.alg == alg
    assert key.kid == key.public_jwk["kid"] == keys.thumbprint(private)


def test_rsa_keys_default_to_2048_bits(generated: dict[str, keys.GeneratedKey]) -> None:
    public = keys.load_public_key(generated["RS256"].public_jwk).get_op_key("verify")

    assert public.key_size == 2048


@pytest.mark.parametrize("size", [3072, 4096])
def test_rsa_key_size_sets_the_modulus_length(size: int) -> None:
    key = keys.generate_key(keys.key_spec("PS256", size))

    assert keys.load_public_key(key.public_jwk).get_op_key("verify").key_size == size


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_public_jwk_never_carries_a_private_member(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    private = keys.load_private_key(generated[alg].private_jwk)

    published = keys.public_jwk(private, alg=alg)

    assert not PRIVATE_MEMBERS & published.keys()
    assert not PRIVATE_MEMBERS & generated[alg].public_jwk.keys()
    assert published == generated[alg].public_jwk


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_public_jwk_has_use_sig_the_alg_and_a_fixed_member_order(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    published = generated[alg].public_jwk

    members = {"RSA": ["n", "e"], "EC": ["crv", "x", "y"], "OKP": ["crv", "x"]}
    assert list(published) == ["kty", "kid", "use", "alg", *members[published["kty"]]]
    assert published["use"] == "sig"
    assert published["alg"] == alg


def test_public_jwk_gives_the_same_bytes_from_a_private_or_public_key(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    key = generated["ES384"]
    from_private = keys.public_jwk(keys.load_private_key(key.private_jwk), alg="ES384")
    from_public = keys.public_jwk(keys.load_public_key(key.public_jwk), alg="ES384")

    assert json.dumps(from_private) == json.dumps(from_public)


def test_public_jwk_refuses_a_key_that_does_not_fit_the_alg(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    ec_key = keys.load_private_key(generated["ES256"].private_jwk)
    secret = jwk.JWK.generate(kty="oct", size=256)

    with pytest.raises(KeysvcError):
        keys.public_jwk(ec_key, alg="RS256")
    with pytest.raises(KeysvcError):
        keys.public_jwk(ec_key, alg="ES384")
    with pytest.raises(KeysvcError):
        keys.public_jwk(secret, alg="RS256")


def test_the_independent_thumbprint_matches_the_rfc7638_example() -> None:
    example = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}

    assert rfc7638_thumbprint(example) == RFC7638_THUMBPRINT
    assert keys.thumbprint(jwk.JWK(**example)) == RFC7638_THUMBPRINT


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_kid_is_the_rfc7638_thumbprint(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    published = generated[alg].public_jwk

    assert published["kid"] == rfc7638_thumbprint(published)


def test_pyjwt_loads_a_key_set_of_every_algorithm(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    published = [key.public_jwk for key in generated.values()]

    key_set = jwt.PyJWKSet(published)

    # PyJWT knows EdDSA but not yet the RFC 9864 name Ed25519, and skips a key
    # whose alg it does not know; the same key material loads under EdDSA.
    known = jwt.algorithms.get_default_algorithms()
    assert known.keys() >= set(keys.SIGNING_ALGS) - {"Ed25519"}
    assert {key.key_id for key in key_set} == {
        key["kid"] for key in published if key["alg"] in known
    }
    assert "EdDSA" in {key.algorithm_name for key in key_set}
    ed25519 = jwt.PyJWK(generated["Ed25519"].public_jwk, algorithm="EdDSA")
    assert ed25519.key_id == generated["Ed25519"].kid


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_a_signature_by_the_private_key_verifies_with_the_public_jwk(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    key = generated[alg]
    signer = jws.JWS(b'{"sub":"client-1"}')
    signer.add_signature(
        keys.load_private_key(key.private_jwk),
        protected=json.dumps({"alg": alg, "kid": key.kid}),
    )
    token = signer.serialize(compact=True)

    verifier = jws.JWS()
    verifier.deserialize(token)
    verifier.verify(keys.load_public_key(key.public_jwk), alg=alg)
    assert verifier.payload == b'{"sub":"client-1"}'
    if alg in jwt.algorithms.get_default_algorithms():
        claims = jwt.decode(token, jwt.PyJWK(key.public_jwk).key, algorithms=[alg])
        assert claims == {"sub": "client-1"}


def test_a_signature_does_not_verify_with_another_key(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    signer = jws.JWS(b"payload")
    signer.add_signature(
        keys.load_private_key(generated["ES256"].private_jwk),
        protected=json.dumps({"alg": "ES256"}),
    )
    other = keys.generate_key(keys.key_spec("ES256"))

    verifier = jws.JWS()
    verifier.deserialize(signer.serialize(compact=True))
    with pytest.raises(jws.InvalidJWSSignature):
        verifier.verify(keys.load_public_key(other.public_jwk), alg="ES256")


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_import_accepts_a_published_key_of_every_alg(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    imported = keys.import_public_jwk(generated[alg].public_jwk, policy_alg=alg)

    assert imported.kid == generated[alg].kid
    assert imported.alg == alg
    assert imported.public_jwk == generated[alg].public_jwk
    assert not imported.key.has_private


def test_import_accepts_a_bare_key_and_adds_kid_use_and_the_policy_alg(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    offered = bare(generated["PS256"].public_jwk)

    imported = keys.import_public_jwk(offered, policy_alg="PS256")

    assert imported.public_jwk == generated["PS256"].public_jwk


@pytest.mark.parametrize(
    ("offered", "policy"), [("EdDSA", "Ed25519"), ("Ed25519", "EdDSA")]
)
def test_import_treats_eddsa_and_ed25519_as_one_alg(
    generated: dict[str, keys.GeneratedKey], offered: str, policy: str
) -> None:
    jwk_in = {**bare(generated["EdDSA"].public_jwk), "alg": offered}

    imported = keys.import_public_jwk(jwk_in, policy_alg=policy)

    assert imported.alg == imported.public_jwk["alg"] == policy


def test_import_accepts_key_ops_verify(generated: dict[str, keys.GeneratedKey]) -> None:
    jwk_in = {**generated["ES512"].public_jwk, "key_ops": ["verify"]}

    assert keys.import_public_jwk(jwk_in, policy_alg="ES512").kid == jwk_in["kid"]


def test_import_refuses_a_kid_that_is_not_the_thumbprint_and_names_it(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    jwk_in = {**generated["RS256"].public_jwk, "kid": "my-key-2024"}

    with pytest.raises(InvalidKey) as caught:
        keys.import_public_jwk(jwk_in, policy_alg="RS256")

    assert generated["RS256"].kid in caught.value.detail
    assert caught.value.extra["expected_kid"] == generated["RS256"].kid


@pytest.mark.parametrize("member", sorted(PRIVATE_MEMBERS))
def test_import_refuses_a_private_member_and_names_it(
    generated: dict[str, keys.GeneratedKey], member: str
) -> None:
    private = json.loads(generated["RS256"].private_jwk)
    jwk_in = {**generated["RS256"].public_jwk, member: private.get(member, "AQAB")}

    with pytest.raises(InvalidKey) as caught:
        keys.import_public_jwk(jwk_in, policy_alg="RS256")

    assert member in caught.value.detail
    assert "private" in caught.value.detail
    for value in private.values():
        assert value not in caught.value.detail


def test_import_refuses_a_whole_private_jwk_without_quoting_it(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    private = json.loads(generated["ES256"].private_jwk)

    with pytest.raises(InvalidKey) as caught:
        keys.import_public_jwk(private, policy_alg="ES256")

    assert private["d"] not in caught.value.detail
    assert private["x"] not in caught.value.detail


@pytest.mark.parametrize(
    "jwk_in", [{"kty": "oct"}, {"kty": "oct", "k": "c2VjcmV0"}], ids=["bare", "with-k"]
)
def test_import_refuses_a_symmetric_key(jwk_in: dict[str, Any]) -> None:
    with pytest.raises(InvalidKey):
        keys.import_public_jwk(jwk_in, policy_alg="RS256")


@pytest.mark.parametrize("obj", [[], "{}", None, 42, b"{}"], ids=repr)
def test_import_refuses_anything_but_a_json_object(obj: object) -> None:
    with pytest.raises(InvalidKey, match="JSON object"):
        keys.import_public_jwk(obj, policy_alg="RS256")


def _set(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(jwk_in: dict[str, Any]) -> None:
        jwk_in[name] = value

    return change


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    def change(jwk_in: dict[str, Any]) -> None:
        del jwk_in[name]

    return change


def _pad(name: str) -> Callable[[dict[str, Any]], None]:
    def change(jwk_in: dict[str, Any]) -> None:
        jwk_in[name] += "=" * (-len(jwk_in[name]) % 4 or 4)

    return change


def _keep(jwk_in: dict[str, Any]) -> None:
    """Leave the key as it is: the policy is what it does not fit."""


# Each case: the key to start from, the client's policy, and what to change.
REFUSALS: dict[str, tuple[str, str, Callable[[dict[str, Any]], None]]] = {
    "unknown member x5c": ("RS256", "RS256", _set("x5c", "MIIB")),
    "unknown member ext": ("ES256", "ES256", _set("ext", "true")),
    "use enc": ("RS256", "RS256", _set("use", "enc")),
    "key_ops sign": ("ES256", "ES256", _set("key_ops", ["sign"])),
    "key_ops verify and sign": ("ES256", "ES256", _set("key_ops", ["verify", "sign"])),
    "key_ops as a string": ("ES256", "ES256", _set("key_ops", "verify")),
    "alg of another hash": ("RS256", "RS256", _set("alg", "RS384")),
    "alg of the other rsa scheme": ("RS256", "RS256", _set("alg", "PS256")),
    "alg HS256": ("RS256", "RS256", _set("alg", "HS256")),
    "alg none": ("RS256", "RS256", _set("alg", "none")),
    "ec key for an rsa policy": ("ES256", "RS256", _keep),
    "rsa key for an eddsa policy": ("RS256", "EdDSA", _keep),
    "okp key for an ec policy": ("EdDSA", "ES256", _keep),
    "curve of another ec alg": ("ES256", "ES384", _drop("alg")),
    "kty missing": ("ES256", "ES256", _drop("kty")),
    "crv missing": ("ES256", "ES256", _drop("crv")),
    "y missing": ("ES256", "ES256", _drop("y")),
    "e missing": ("RS256", "RS256", _drop("e")),
    "x too short": ("ES256", "ES256", _set("x", b64url(b"\x01" * 31))),
    "okp x too short": ("EdDSA", "EdDSA", _set("x", b64url(b"\x01" * 31))),
    "x with padding": ("ES256", "ES256", _pad("x")),
    "n with padding": ("RS256", "RS256", _pad("n")),
    "x not base64url": ("ES256", "ES256", _set("x", "not*base64+url/at=all")),
    "x not ascii": ("ES256", "ES256", _set("x", "\u00e9" * 43)),
    "x not a string": ("ES256", "ES256", _set("x", 12345)),
    "crv not a string": ("ES256", "ES256", _set("crv", ["P-256"])),
    "kid not a string": ("ES256", "ES256", _set("kid", ["a"])),
    "use null": ("ES256", "ES256", _set("use", None)),
    "oversized member": ("ES256", "ES256", _set("x", "A" * 3000)),
    "oversized kid": ("ES256", "ES256", _set("kid", "k" * 1000)),
    "oversized whole jwk": ("ES256", "ES256", _set("x5c", "A" * 17000)),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_import_refuses_a_bad_jwk_without_quoting_key_material(
    generated: dict[str, keys.GeneratedKey], case: str
) -> None:
    start, policy, change = REFUSALS[case]
    jwk_in = dict(generated[start].public_jwk)
    change(jwk_in)

    with pytest.raises(InvalidKey) as caught:
        keys.import_public_jwk(jwk_in, policy_alg=policy)

    for name in ("n", "x", "y"):
        if isinstance(jwk_in.get(name), str) and len(jwk_in[name]) > 8:
            assert jwk_in[name] not in caught.value.detail


@pytest.mark.parametrize("bits", [1024, 2040])
def test_import_refuses_an_rsa_modulus_below_2048_bits(bits: int) -> None:
    with pytest.raises(InvalidKey, match="2048"):
        keys.import_public_jwk(rsa_jwk(bits), policy_alg="RS256")


def test_import_refuses_an_rsa_modulus_above_8192_bits() -> None:
    jwk_in = {"kty": "RSA", "n": b64url_uint((1 << 8200) | 1), "e": "AQAB"}

    with pytest.raises(InvalidKey, match="8192"):
        keys.import_public_jwk(jwk_in, policy_alg="RS256")


@pytest.mark.parametrize("exponent", [1, 2, 65536, 1 << 300 | 1], ids=str)
def test_import_refuses_an_rsa_exponent_even_or_below_3_or_huge(
    generated: dict[str, keys.GeneratedKey], exponent: int
) -> None:
    jwk_in = {**bare(generated["RS256"].public_jwk), "e": b64url_uint(exponent)}

    with pytest.raises(InvalidKey, match="exponent"):
        keys.import_public_jwk(jwk_in, policy_alg="RS256")


def test_import_refuses_an_rsa_modulus_with_a_leading_zero(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    jwk_in = bare(generated["RS256"].public_jwk)
    modulus = base64.urlsafe_b64decode(jwk_in["n"] + "==")
    jwk_in["n"] = b64url(b"\x00" + modulus)

    with pytest.raises(InvalidKey, match="leading zero"):
        keys.import_public_jwk(jwk_in, policy_alg="RS256")


def test_import_accepts_rsa_up_to_8192_bits() -> None:
    """Imported keys may be larger than the sizes keysvc generates."""
    # Generating a real 8192-bit key takes seconds; an odd number passes for one.
    modulus = int.from_bytes(os.urandom(1024), "big") | (1 << 8191) | 1
    jwk_in = {"kty": "RSA", "n": b64url_uint(modulus), "e": "AQAB"}

    imported = keys.import_public_jwk(jwk_in, policy_alg="RS512")

    assert imported.public_jwk["n"] == jwk_in["n"]


def _point_off_curve() -> dict[str, Any]:
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    y = (numbers.y + 1).to_bytes(32, "big")

    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(y),
    }


def test_import_refuses_an_ec_point_that_is_not_on_the_curve() -> None:
    with pytest.raises(InvalidKey, match="usable"):
        keys.import_public_jwk(_point_off_curve(), policy_alg="ES256")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=50),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
member_names = st.sampled_from(
    ["kty", "n", "e", "crv", "x", "y", "kid", "use", "alg", "key_ops", "d", "k"]
) | st.text(max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(keys.SIGNING_ALGS),
    start=st.sampled_from(keys.SIGNING_ALGS),
    changes=st.dictionaries(member_names, json_values, max_size=4),
    drops=st.sets(member_names, max_size=2),
)
def test_import_raises_nothing_but_invalid_key_for_any_json(
    generated: dict[str, keys.GeneratedKey],
    policy: str,
    start: str,
    changes: dict[str, Any],
    drops: set[str],
) -> None:
    """Starting from a real key keeps the checks past the first ones exercised."""
    jwk_in = {**generated[start].public_jwk, **changes}
    for name in drops:
        jwk_in.pop(name, None)

    try:
        imported = keys.import_public_jwk(jwk_in, policy_alg=policy)
    except InvalidKey:
        return

    assert not PRIVATE_MEMBERS & jwk_in.keys()
    assert imported.kid == rfc7638_thumbprint(imported.public_jwk)


@settings(max_examples=200, deadline=None)
@given(obj=json_values)
def test_import_raises_nothing_but_invalid_key_for_any_json_value(obj: object) -> None:
    with pytest.raises(InvalidKey):
        keys.import_public_jwk(obj, policy_alg="ES256")


def test_key_spec_fills_in_the_rsa_size_and_leaves_others_without() -> None:
    assert keys.key_spec("RS256") == keys.KeySpec("RS256", 2048)
    assert keys.key_spec("PS384", 4096) == keys.KeySpec("PS384", 4096)
    assert keys.key_spec("RS512", default_rsa_size=3072).key_size == 3072
    assert keys.key_spec("ES256") == keys.KeySpec("ES256", None)
    assert keys.key_spec("Ed25519").key_size is None


@pytest.mark.parametrize(
    ("alg", "key_size", "says"),
    [
        ("HS256", None, "shared secret"),
        ("none", None, "none"),
        ("RS1", None, "not one of"),
        ("rs256", None, "not one of"),
        ("ES256", 256, "RSA only"),
        ("EdDSA", 2048, "RSA only"),
        ("RS256", 1024, "one of 2048, 3072, 4096"),
        ("RS256", 8192, "one of 2048, 3072, 4096"),
        ("PS256", 2048.0, "integer"),
        ("PS256", True, "integer"),
        ("PS256", "2048", "integer"),
    ],
)
def test_key_spec_refuses_a_bad_policy(alg: str, key_size: Any, says: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        keys.key_spec(alg, key_size)

    assert says in caught.value.detail


def test_key_spec_refuses_a_default_rsa_size_keysvc_does_not_generate() -> None:
    with pytest.raises(InvalidPolicy):
        keys.key_spec("RS256", default_rsa_size=1024)


def test_key_spec_cannot_be_built_invalid() -> None:
    with pytest.raises(InvalidPolicy):
        keys.KeySpec("ES256", 2048)


@pytest.mark.parametrize(
    ("alg_a", "alg_b", "same"),
    [
        ("EdDSA", "Ed25519", True),
        ("Ed25519", "EdDSA", True),
        ("RS256", "RS256", True),
        ("ES384", "ES384", True),
        ("RS256", "PS256", False),
        ("RS256", "RS384", False),
        ("ES256", "ES384", False),
        ("EdDSA", "ES256", False),
        ("HS256", "HS256", False),
        ("none", "none", False),
    ],
)
def test_same_family(alg_a: str, alg_b: str, same: bool) -> None:
    assert keys.same_family(alg_a, alg_b) is same


@pytest.mark.parametrize("alg", keys.SIGNING_ALGS)
def test_generated_key_repr_holds_no_private_material(
    generated: dict[str, keys.GeneratedKey], alg: str
) -> None:
    key = generated[alg]
    private = json.loads(key.private_jwk)

    shown = repr(key) + str(key)

    assert "private_jwk" not in shown
    for name in PRIVATE_MEMBERS & private.keys():
        assert private[name] not in shown


def test_imported_key_repr_hides_the_jwcrypto_key(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    imported = keys.import_public_jwk(generated["ES256"].public_jwk, policy_alg="ES256")

    assert "JWK" not in repr(imported)
    assert imported.kid in repr(imported)


def test_load_public_key_refuses_private_members(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    with pytest.raises(InvalidKey, match="private"):
        keys.load_public_key(json.loads(generated["EdDSA"].private_jwk))


@pytest.mark.parametrize(
    "public",
    [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "secp256k1"}, {"kty": 1}],
    ids=["oct", "secp256k1", "kty-int"],
)
def test_load_public_key_refuses_what_keysvc_does_not_sign_with(
    public: dict[str, Any],
) -> None:
    with pytest.raises(InvalidKey):
        keys.load_public_key(public)


@pytest.mark.parametrize(
    "blob", [b"not json", b"[]", b'{"kty": "EC"}', b"\xff"], ids=repr
)
def test_load_private_key_refuses_what_is_not_a_private_jwk(blob: bytes) -> None:
    with pytest.raises(KeysvcError):
        keys.load_private_key(blob)


def test_load_private_key_refuses_a_public_only_jwk(
    generated: dict[str, keys.GeneratedKey],
) -> None:
    with pytest.raises(KeysvcError, match="private"):
        keys.load_private_key(json.dumps(generated["ES256"].public_jwk).encode())


@pytest.mark.slow
def test_generate_key_runs_in_a_process_pool() -> None:
    """Spawned, not forked: the spec and the key must cross as pickles."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(keys.generate_key, keys.key_spec("ES256"))
        key = future.result(timeout=60)

    assert key.kid == keys.thumbprint(keys.load_private_key(key.private_jwk))
