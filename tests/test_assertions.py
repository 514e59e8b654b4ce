"""Client assertions: parsing, claim checks, signatures, signing, interop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jwcrypto.common import base64url_decode
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from keysvc.assertions import (
    EXPLICIT_TYP,
    MAX_ASSERTION_BYTES,
    ParsedAssertion,
    VerificationKey,
    VerifyPolicy,
    check_claims,
    check_signature,
    parse_assertion,
    sign_assertion,
)
from keysvc.errors import AssertionRejected

AUDIENCE = "https://as.example/token"
ISSUER_AUDIENCE = "https://as.example"
CLIENT = "client-1"
KID = "kid-1"
NOW = 1_700_000_000.0
POLICY = VerifyPolicy(audiences=frozenset({AUDIENCE, ISSUER_AUDIENCE}))
STRICT_TYP = VerifyPolicy(audiences=POLICY.audiences, require_typ=True)

# Each algorithm under test and the key fixture it signs with.
KEY_OF = {
    "RS256": "rsa",
    "PS256": "rsa",
    "ES256": "p256",
    "ES384": "p384",
    "ES512": "p521",
    "EdDSA": "ed25519",
    "Ed25519": "ed25519",
    "HS256": "secret",
}
PYJWT_ALGS = [alg for alg in KEY_OF if alg != "Ed25519"]  # PyJWT lacks RFC 9864
DROP = object()


@pytest.fixture(scope="module")
def keys() -> dict[str, JWK]:
    return {
        "rsa": JWK.generate(kty="RSA", size=2048),
        "p256": JWK.generate(kty="EC", crv="P-256"),
        "p384": JWK.generate(kty="EC", crv="P-384"),
        "p521": JWK.generate(kty="EC", crv="P-521"),
        "ed25519": JWK.generate(kty="OKP", crv="Ed25519"),
        "secret": JWK.generate(kty="oct", size=256),
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def compact(header: object, claims: object, signature: bytes = b"\x01" * 64) -> str:
    return f"{b64json(header)}.{b64json(claims)}.{b64(signature)}"


def claims(**changes: object) -> dict[str, Any]:
    """Valid claims at NOW, with some changed or (as DROP) removed."""
    values: dict[str, Any] = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "jti-1",
    }
    values.update(changes)

    return {name: value for name, value in values.items() if value is not DROP}


def signed(header: dict[str, Any], body: dict[str, Any], key: JWK) -> str:
    """A compact JWS over any header and claims, signed by jwcrypto directly."""
    signing_input = f"{b64json(header)}.{b64json(body)}"
    signature = JWA.signing_alg(header["alg"]).sign(key, signing_input.encode())

    return f"{signing_input}.{b64(signature)}"


def public(key: JWK) -> JWK:
    return JWK(**key.export_public(as_dict=True))


def verification_key(alg: str, key: JWK) -> VerificationKey:
    symmetric = key["kty"] == "oct"
    return VerificationKey(
        kid=KID, alg=alg, key=key if symmetric else public(key), symmetric=symmetric
    )


def verify(token: object, key: VerificationKey, policy: VerifyPolicy = POLICY) -> None:
    parsed = parse_assertion(token, policy)
    check_claims(parsed, policy, now=NOW)
    check_signature(parsed, key)


def refused(step: Callable[[], object]) -> str:
    with pytest.raises(AssertionRejected) as caught:
        step()
    return caught.value.reason


def parse_reason(token: object, policy: VerifyPolicy = POLICY) -> str:
    return refused(lambda: parse_assertion(token, policy))


def claims_reason(body: object, policy: VerifyPolicy = POLICY) -> str:
    token = compact({"alg": "ES256"}, body)
    return refused(
        lambda: check_claims(parse_assertion(token, policy), policy, now=NOW)
    )


def signature_reason(token: str, key: VerificationKey) -> str:
    return refused(lambda: check_signature(parse_assertion(token, POLICY), key))


def with_unused_bits(segment: str) -> str:
    """The same bytes, spelt with the last character's unused low bit set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]


def pyjwt_key(key: JWK, *, private: bool) -> Any:
    if key["kty"] == "oct":
        return base64url_decode(key["k"])
    return key.export_to_pem(private_key=private, password=None)


# Round trips and interoperability


@pytest.mark.parametrize("alg", list(KEY_OF))
def test_signed_assertion_passes_every_step(keys: dict[str, JWK], alg: str) -> None:
    key = keys[KEY_OF[alg]]
    assertion = sign_assertion(
        key,
        alg=alg,
        kid=KID,
        client_id=CLIENT,
        audience=AUDIENCE,
        lifetime_seconds=300,
        now=NOW,
    )

    parsed = parse_assertion(assertion.token, POLICY)
    check_claims(parsed, POLICY, now=NOW)
    check_signature(parsed, verification_key(alg, key))

    assert (parsed.alg, parsed.kid, parsed.client_id) == (alg, KID, CLIENT)
    assert (parsed.jti, parsed.exp) == (assertion.jti, assertion.expires_at)


@pytest.mark.parametrize("alg", PYJWT_ALGS)
def test_signed_assertion_verifies_with_pyjwt(keys: dict[str, JWK], alg: str) -> None:
    key = keys[KEY_OF[alg]]
    assertion = sign_assertion(
        key,
        alg=alg,
        kid=KID,
        client_id=CLIENT,
        audience=AUDIENCE,
        lifetime_seconds=300,
        now=NOW,
    )

    decoded = jwt.decode(
        assertion.token,
        pyjwt_key(key, private=False),
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=CLIENT,
        options={"verify_exp": False, "verify_iat": False},
    )

    assert jwt.get_unverified_header(assertion.token) == {"alg": alg, "kid": KID}
    assert decoded == {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": assertion.jti,
    }


@pytest.mark.parametrize("alg", PYJWT_ALGS)
def test_pyjwt_assertion_passes_every_step(keys: dict[str, JWK], alg: str) -> None:
    key = keys[KEY_OF[alg]]
    token = jwt.encode(
        claims(), pyjwt_key(key, private=True), algorithm=alg, headers={"kid": KID}
    )

    verify(token, verification_key(alg, key))


@pytest.mark.parametrize(
    ("signed_as", "published_as"), [("EdDSA", "Ed25519"), ("Ed25519", "EdDSA")]
)
def test_eddsa_and_ed25519_name_one_algorithm(
    keys: dict[str, JWK], signed_as: str, published_as: str
) -> None:
    token = signed({"alg": signed_as}, claims(), keys["ed25519"])

    verify(token, verification_key(published_as, keys["ed25519"]))


def test_assertion_carries_rfc7523_claims_and_a_fresh_jti(keys: dict[str, JWK]) -> None:
    def make() -> ParsedAssertion:
        assertion = sign_assertion(
            keys["p256"],
            alg="ES256",
            kid=None,
            client_id=CLIENT,
            audience=[AUDIENCE, ISSUER_AUDIENCE],
            lifetime_seconds=120,
            now=NOW + 0.9,
        )
        return parse_assertion(assertion.token, POLICY)

    first, second = make(), make()

    assert first.header == {"alg": "ES256"}
    assert first.claims["aud"] == [AUDIENCE, ISSUER_AUDIENCE]
    assert (first.claims["iat"], first.exp) == (int(NOW), int(NOW) + 120)
    assert len(base64url_decode(first.jti)) == 32
    assert first.jti != second.jti
    check_claims(first, POLICY, now=NOW)


def test_explicit_typ_is_emitted_and_satisfies_a_strict_verifier(
    keys: dict[str, JWK],
) -> None:
    assertion = sign_assertion(
        keys["secret"],
        alg="HS256",
        kid=KID,
        client_id=CLIENT,
        audience=AUDIENCE,
        lifetime_seconds=60,
        now=NOW,
        explicit_typ=True,
    )

    assert jwt.get_unverified_header(assertion.token)["typ"] == EXPLICIT_TYP
    verify(assertion.token, verification_key("HS256", keys["secret"]), STRICT_TYP)


@pytest.mark.parametrize(
    "typ",
    [
        "client-authentication+jwt",
        "Client-Authentication+JWT",
        "application/client-authentication+jwt",
        "Application/Client-Authentication+jwt",
    ],
)
def test_required_typ_is_compared_as_a_media_type(typ: str) -> None:
    parse_assertion(compact({"alg": "ES256", "typ": typ}, claims()), STRICT_TYP)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "ES256"},
        {"alg": "ES256", "typ": "JWT"},
        {"alg": "ES256", "typ": "application/jwt"},
        {"alg": "ES256", "typ": "text/client-authentication+jwt"},
        {"alg": "ES256", "typ": "application/x/client-authentication+jwt"},
    ],
)
def test_required_typ_missing_or_wrong_is_refused(header: dict[str, str]) -> None:
    assert parse_reason(compact(header, claims()), STRICT_TYP) == "typ"


def test_typ_is_not_judged_unless_required() -> None:
    parse_assertion(compact({"alg": "ES256", "typ": "JWT"}, claims()), POLICY)


def test_sign_assertion_refuses_a_key_that_does_not_fit_the_alg(
    keys: dict[str, JWK],
) -> None:
    for alg, key in [("RS256", "p256"), ("ES384", "p256"), ("HS256", "rsa")]:
        with pytest.raises(ValueError, match="cannot sign"):
            sign_assertion(
                keys[key],
                alg=alg,
                kid=KID,
                client_id=CLIENT,
                audience=AUDIENCE,
                lifetime_seconds=60,
                now=NOW,
            )


@pytest.mark.parametrize("lifetime_seconds", [0, -60])
def test_sign_assertion_refuses_a_lifetime_that_is_not_positive(
    keys: dict[str, JWK], lifetime_seconds: int
) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        sign_assertion(
            keys["secret"],
            alg="HS256",
            kid=KID,
            client_id=CLIENT,
            audience=AUDIENCE,
            lifetime_seconds=lifetime_seconds,
            now=NOW,
        )


def test_reprs_never_show_the_token(keys: dict[str, JWK]) -> None:
    assertion = sign_assertion(
        keys["secret"],
        alg="HS256",
        kid=KID,
        client_id=CLIENT,
        audience=AUDIENCE,
        lifetime_seconds=60,
        now=NOW,
    )
    parsed = parse_assertion(assertion.token, POLICY)
    signature = assertion.token.rsplit(".", 1)[1]

    for shown in (
        repr(assertion),
        repr(parsed),
        repr(verification_key("HS256", keys["secret"])),
    ):
        assert signature not in shown
        assert keys["secret"]["k"] not in shown


# Structure and header: parse_assertion


@pytest.mark.parametrize("token", [None, 7, b"a.b.c", ["a", "b", "c"]])
def test_a_token_that_is_not_a_string_is_malformed(token: object) -> None:
    assert parse_reason(token) == "malformed"


def test_an_oversized_token_is_refused_before_anything_else() -> None:
    assert parse_reason("{" + "a" * MAX_ASSERTION_BYTES) == "too_large"
    small = VerifyPolicy(audiences=POLICY.audiences, max_bytes=100)
    assert parse_reason(compact({"alg": "ES256"}, claims()), small) == "too_large"


def test_json_serialization_is_refused() -> None:
    general = json.dumps(
        {
            "payload": b64json(claims()),
            "signatures": [{"protected": b64json({"alg": "ES256"}), "signature": "AA"}],
        }
    )

    assert parse_reason(general) == "unsupported_serialization"
    assert parse_reason("  " + general) == "unsupported_serialization"


def test_an_encrypted_jwt_is_refused(keys: dict[str, JWK]) -> None:
    jwe = JWE(
        json.dumps(claims()).encode(),
        protected=json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM"}),
    )
    jwe.add_recipient(public(keys["rsa"]))

    assert parse_reason(jwe.serialize(compact=True)) == "unsupported_serialization"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e.f",
        "...",
        "éyJ.eyJ.AA",
        "eyJhbGciOiJFUzI1NiJ9.eyJ.AA\n",
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert parse_reason(token) == "malformed"


@pytest.mark.parametrize(
    "segment",
    [
        b64json({"alg": "ES256"}) + "=",  # padded
        base64.b64encode(b'{"alg":"ES256","kid":"??>"}').decode(),  # + and /
        b64json({"alg": "ES256"}) + "*",
        "eyJhbGciOiJFUzI1NiJ9A",  # a length base64 cannot have
        with_unused_bits(b64(b'{"alg":"ES256"} ')),
    ],
)
def test_header_segment_must_be_strict_base64url(segment: str) -> None:
    assert parse_reason(f"{segment}.{b64json(claims())}.AAAA") == "malformed"


def test_signature_segment_must_be_strict_base64url() -> None:
    token = compact({"alg": "ES256"}, claims())

    assert parse_reason(token + "=") == "malformed"
    assert parse_reason(token[:-1] + "+") == "malformed"
    assert parse_reason(with_unused_bits(token)) == "malformed"


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'"ES256"',
        b"null",
        b"1",
        b"{",
        b'{"alg":"ES256"} x',
        b"\xff\xfe{}",
        '{"alg":"ES256"}'.encode("utf-16"),
    ],
)
def test_header_must_be_a_json_object(header: bytes) -> None:
    assert parse_reason(f"{b64(header)}.{b64json(claims())}.AAAA") == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b'{"exp":1e400}',
        b'{"jti":"a","jti":"b"}',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_payload_must_be_a_plain_json_object(payload: bytes) -> None:
    assert (
        parse_reason(f"{b64json({'alg': 'ES256'})}.{b64(payload)}.AAAA") == "malformed"
    )


def test_duplicate_header_members_are_malformed() -> None:
    header = b'{"alg":"ES256","alg":"none"}'

    assert parse_reason(f"{b64(header)}.{b64json(claims())}.AAAA") == "malformed"


@pytest.mark.parametrize(
    "header", [{}, {"alg": None}, {"alg": 256}, {"alg": ["ES256"]}]
)
def test_header_without_a_string_alg_is_malformed(header: dict[str, Any]) -> None:
    assert parse_reason(compact(header, claims())) == "malformed"


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "nOnE", "HS512", "ES256K", "RSA-OAEP", ""]
)
def test_none_and_unsupported_algs_are_not_allowed(alg: str) -> None:
    assert parse_reason(compact({"alg": alg}, claims(), b"")) == "alg_not_allowed"


@pytest.mark.parametrize(
    "extra",
    [{"crit": ["exp"]}, {"crit": []}, {"b64": False}, {"b64": "false"}],
)
def test_header_extensions_are_unsupported(extra: dict[str, Any]) -> None:
    assert (
        parse_reason(compact({"alg": "ES256", **extra}, claims()))
        == "unsupported_header"
    )


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_keys_named_by_the_token_itself_are_untrusted(
    keys: dict[str, JWK], member: str
) -> None:
    attacker = keys["p256"]
    value = {
        "jwk": attacker.export_public(as_dict=True),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    }[member]
    token = signed({"alg": "ES256", member: value}, claims(), attacker)

    assert parse_reason(token) == "untrusted_header"


@pytest.mark.parametrize("kid", [None, 1, "", "a\x00b", ["kid-1"]])
def test_kid_that_is_not_a_usable_string_is_malformed(kid: object) -> None:
    assert parse_reason(compact({"alg": "ES256", "kid": kid}, claims())) == "malformed"


# Claims: check_claims


def test_valid_claims_pass_and_expose_the_client() -> None:
    parsed = parse_assertion(compact({"alg": "ES256", "kid": KID}, claims()), POLICY)
    check_claims(parsed, POLICY, now=NOW)

    assert (parsed.client_id, parsed.kid, parsed.jti) == (CLIENT, KID, "jti-1")


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": "client-2"},
        {"iss": DROP},
        {"sub": DROP},
        {"iss": 1, "sub": 1},
        {"iss": "", "sub": ""},
        {"iss": "c\x00", "sub": "c\x00"},
    ],
)
def test_iss_and_sub_must_be_one_client(changes: dict[str, object]) -> None:
    assert claims_reason(claims(**changes)) == "iss_sub_mismatch"


def test_a_requested_client_id_narrows() -> None:
    narrowed = VerifyPolicy(audiences=POLICY.audiences, expected_client_id="client-2")

    assert claims_reason(claims(), narrowed) == "client_id"


@pytest.mark.parametrize(
    "aud",
    [
        DROP,
        "https://other.example",
        AUDIENCE + "/",
        AUDIENCE.upper(),
        [],
        ["https://other.example"],
        [AUDIENCE, 1],
        {"aud": AUDIENCE},
        None,
    ],
)
def test_audience_must_name_this_verifier(aud: object) -> None:
    assert claims_reason(claims(aud=aud)) == "audience"


def test_an_audience_list_is_accepted_when_one_entry_matches() -> None:
    token = compact(
        {"alg": "ES256"}, claims(aud=["https://other.example", ISSUER_AUDIENCE])
    )

    check_claims(parse_assertion(token, POLICY), POLICY, now=NOW)


@pytest.mark.parametrize("exp", [DROP, None, "1700000300", True, [1700000300]])
def test_exp_must_be_present_and_a_number(exp: object) -> None:
    assert claims_reason(claims(exp=exp)) == "missing_exp"


def test_expiry_allows_the_leeway_and_no_more() -> None:
    assert claims_reason(claims(exp=int(NOW) - 30)) == "expired"
    assert claims_reason(claims(exp=int(NOW) - 3600)) == "expired"
    check_claims(
        parse_assertion(compact({"alg": "ES256"}, claims(exp=int(NOW) - 29)), POLICY),
        POLICY,
        now=NOW,
    )


def test_nbf_and_iat_may_lead_by_the_leeway_and_no_more() -> None:
    assert claims_reason(claims(nbf=int(NOW) + 31)) == "not_yet_valid"
    assert claims_reason(claims(iat=int(NOW) + 31)) == "iat_in_future"
    check_claims(
        parse_assertion(
            compact({"alg": "ES256"}, claims(nbf=NOW + 30, iat=NOW + 30)), POLICY
        ),
        POLICY,
        now=NOW,
    )


@pytest.mark.parametrize("changes", [{"iat": "now"}, {"nbf": None}, {"iat": False}])
def test_non_numeric_iat_or_nbf_is_malformed(changes: dict[str, object]) -> None:
    assert claims_reason(claims(**changes)) == "malformed"


def test_lifetime_is_bounded() -> None:
    assert claims_reason(claims(exp=int(NOW) + 601)) == "lifetime_too_long"
    assert claims_reason(claims(iat=DROP, exp=int(NOW) + 601)) == "lifetime_too_long"
    assert claims_reason(claims(exp=10**400)) == "lifetime_too_long"
    assert claims_reason(claims(iat=-(10**400), exp=int(NOW))) == "lifetime_too_long"
    check_claims(
        parse_assertion(compact({"alg": "ES256"}, claims(exp=int(NOW) + 600)), POLICY),
        POLICY,
        now=NOW,
    )


@pytest.mark.parametrize("jti", [DROP, None, "", 17, "x" * 257, "\ud800", "a\x00"])
def test_jti_must_be_a_bounded_string(jti: object) -> None:
    assert claims_reason(claims(jti=jti)) == "missing_jti"


def test_exp_property_rounds_up() -> None:
    parsed = parse_assertion(compact({"alg": "ES256"}, claims(exp=NOW + 10.2)), POLICY)

    assert parsed.exp == int(NOW) + 11


# Signatures: check_signature


def test_hs256_keyed_by_the_rsa_public_key_is_an_alg_mismatch(
    keys: dict[str, JWK],
) -> None:
    """The classic confusion: an RSA key's public PEM used as an HMAC secret."""
    pem = keys["rsa"].export_to_pem()
    signing_input = f"{b64json({'alg': 'HS256', 'kid': KID})}.{b64json(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"

    assert (
        signature_reason(token, verification_key("RS256", keys["rsa"]))
        == "alg_mismatch"
    )


@pytest.mark.parametrize(
    ("token_alg", "key_alg", "key"),
    [
        ("PS256", "RS256", "rsa"),
        ("RS256", "PS256", "rsa"),
        ("ES384", "ES256", "p256"),
        ("EdDSA", "ES256", "p256"),
        ("HS256", "ES256", "p256"),
    ],
)
def test_token_alg_must_be_the_published_alg(
    keys: dict[str, JWK], token_alg: str, key_alg: str, key: str
) -> None:
    token = signed({"alg": token_alg}, claims(), keys[KEY_OF[token_alg]])

    assert (
        signature_reason(token, verification_key(key_alg, keys[key])) == "alg_mismatch"
    )


def test_hmac_needs_a_secret_and_a_secret_allows_only_hs256(
    keys: dict[str, JWK],
) -> None:
    token = signed({"alg": "HS256"}, claims(), keys["secret"])
    not_secret = VerificationKey(kid=KID, alg="HS256", key=keys["secret"])
    secret_as_es256 = VerificationKey(
        kid=KID, alg="ES256", key=public(keys["p256"]), symmetric=True
    )

    assert signature_reason(token, not_secret) == "alg_mismatch"
    es256 = signed({"alg": "ES256"}, claims(), keys["p256"])
    assert signature_reason(es256, secret_as_es256) == "alg_mismatch"


def test_a_key_whose_type_does_not_fit_its_alg_is_an_alg_mismatch(
    keys: dict[str, JWK],
) -> None:
    token = signed({"alg": "ES384"}, claims(), keys["p384"])
    p256_as_es384 = VerificationKey(kid=KID, alg="ES384", key=public(keys["p256"]))

    assert signature_reason(token, p256_as_es384) == "alg_mismatch"


@pytest.mark.parametrize("alg", list(KEY_OF))
def test_tampered_payload_is_a_bad_signature(keys: dict[str, JWK], alg: str) -> None:
    key = keys[KEY_OF[alg]]
    header, _, signature = signed({"alg": alg}, claims(), key).split(".")
    token = (
        f"{header}.{b64json(claims(sub=CLIENT, iss=CLIENT, jti='jti-2'))}.{signature}"
    )

    assert signature_reason(token, verification_key(alg, key)) == "bad_signature"


@pytest.mark.parametrize("alg", list(KEY_OF))
def test_truncated_signature_is_a_bad_signature(keys: dict[str, JWK], alg: str) -> None:
    key = keys[KEY_OF[alg]]
    token = signed({"alg": alg}, claims(), key)
    head, signature = token.rsplit(".", 1)
    raw = base64url_decode(signature)

    for cut in (raw[:-1], raw[: len(raw) // 2], b""):
        assert (
            signature_reason(f"{head}.{b64(cut)}", verification_key(alg, key))
            == "bad_signature"
        )


def test_a_signature_by_another_key_is_a_bad_signature(keys: dict[str, JWK]) -> None:
    token = signed({"alg": "ES256"}, claims(), JWK.generate(kty="EC", crv="P-256"))

    assert (
        signature_reason(token, verification_key("ES256", keys["p256"]))
        == "bad_signature"
    )


def test_an_ecdsa_signature_in_another_encoding_is_a_bad_signature(
    keys: dict[str, JWK],
) -> None:
    """(r, s) padded to 33 bytes each is the same pair to OpenSSL, not to RFC 7518."""
    head = f"{b64json({'alg': 'ES256'})}.{b64json(claims())}"
    der = keys["p256"].get_op_key("sign").sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    padded = r.to_bytes(33, "big") + s.to_bytes(33, "big")

    assert (
        signature_reason(
            f"{head}.{b64(padded)}", verification_key("ES256", keys["p256"])
        )
        == "bad_signature"
    )


def test_an_rsa_pss_signature_shorter_than_the_modulus_is_a_bad_signature(
    keys: dict[str, JWK],
) -> None:
    """OpenSSL takes a PSS signature with its leading zero byte dropped."""
    head = f"{b64json({'alg': 'PS256'})}.{b64json(claims())}".encode()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    private = keys["rsa"].get_op_key("sign")
    signature = next(
        sig
        for sig in (private.sign(head, pss, hashes.SHA256()) for _ in range(20_000))
        if sig[0] == 0
    )

    token = f"{head.decode()}.{b64(signature[1:])}"
    assert (
        signature_reason(token, verification_key("PS256", keys["rsa"]))
        == "bad_signature"
    )


def test_a_key_not_for_signatures_is_a_bad_signature(keys: dict[str, JWK]) -> None:
    token = signed({"alg": "ES256"}, claims(), keys["p256"])
    for_encryption = JWK(**{**keys["p256"].export_public(as_dict=True), "use": "enc"})

    key = VerificationKey(kid=KID, alg="ES256", key=for_encryption)
    assert signature_reason(token, key) == "bad_signature"


# Properties


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
header_names = st.sampled_from(
    ["alg", "kid", "typ", "crit", "b64", "jwk", "x5t", "cty"]
) | st.text(max_size=5)
claim_names = st.sampled_from(
    ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]
) | st.text(max_size=5)
algs = st.sampled_from([*KEY_OF, "none", "HS384"])
hypothesis_settings = settings(max_examples=150, deadline=None, database=None)


def only_rejections(token: object, key: VerificationKey) -> None:
    """Run every step; anything but AssertionRejected escapes and fails."""
    try:
        verify(token, key)
    except AssertionRejected:
        pass


@hypothesis_settings
@given(token=st.text(max_size=300) | st.binary(max_size=50) | st.none() | st.integers())
def test_arbitrary_input_only_ever_raises_rejections(
    keys: dict[str, JWK], token: object
) -> None:
    only_rejections(token, verification_key("HS256", keys["secret"]))


@hypothesis_settings
@given(segments=st.lists(st.binary(max_size=80), min_size=1, max_size=6))
def test_arbitrary_bytes_in_segments_only_ever_raise_rejections(
    keys: dict[str, JWK], segments: list[bytes]
) -> None:
    only_rejections(
        ".".join(b64(s) for s in segments), verification_key("HS256", keys["secret"])
    )


@hypothesis_settings
@given(
    alg=algs,
    header=st.dictionaries(header_names, json_values, max_size=4),
    body=st.dictionaries(claim_names, json_values, max_size=7) | st.builds(claims),
    signature=st.binary(max_size=70),
)
def test_arbitrary_json_tokens_only_ever_raise_rejections(
    keys: dict[str, JWK],
    alg: str,
    header: dict[str, Any],
    body: dict[str, Any],
    signature: bytes,
) -> None:
    token = compact({**header, "alg": alg}, body, signature)
    key_alg = alg if alg in KEY_OF else "HS256"

    only_rejections(token, verification_key(key_alg, keys[KEY_OF[key_alg]]))


@pytest.fixture(scope="module")
def genuine(keys: dict[str, JWK]) -> list[tuple[str, VerificationKey]]:
    """Valid tokens, one for each of a few fast algorithms, with their keys."""
    made = []
    for alg in ("HS256", "ES256", "EdDSA"):
        key = keys[KEY_OF[alg]]
        assertion = sign_assertion(
            key,
            alg=alg,
            kid=KID,
            client_id=CLIENT,
            audience=AUDIENCE,
            lifetime_seconds=300,
            now=NOW,
        )
        verify(assertion.token, verification_key(alg, key))
        made.append((assertion.token, verification_key(alg, key)))

    return made


@hypothesis_settings
@given(
    which=st.integers(0, 2),
    position=st.integers(min_value=0),
    char=st.characters(max_codepoint=0x7F),
)
def test_any_changed_character_of_a_valid_token_is_refused(
    genuine: list[tuple[str, VerificationKey]], which: int, position: int, char: str
) -> None:
    token, key = genuine[which]
    position %= len(token)
    assume(token[position] != char)

    with pytest.raises(AssertionRejected):
        verify(token[:position] + char + token[position + 1 :], key)


@hypothesis_settings
@given(
    which=st.integers(0, 2),
    part=st.integers(0, 1),
    position=st.integers(min_value=0),
    char=st.characters(),
)
def test_any_changed_character_of_the_decoded_json_is_refused(
    genuine: list[tuple[str, VerificationKey]],
    which: int,
    part: int,
    position: int,
    char: str,
) -> None:
    token, key = genuine[which]
    segments = token.split(".")
    decoded = base64url_decode(segments[part]).decode()
    position %= len(decoded)
    assume(decoded[position] != char)

    changed = decoded[:position] + char + decoded[position + 1 :]
    segments[part] = b64(changed.encode("utf-8", "surrogatepass"))
    with pytest.raises(AssertionRejected):
        verify(".".join(segments), key)


@hypothesis_settings
@given(
    which=st.integers(0, 2), position=st.integers(min_value=0), flip=st.integers(1, 255)
)
def test_any_changed_byte_of_the_signature_is_refused(
    genuine: list[tuple[str, VerificationKey]], which: int, position: int, flip: int
) -> None:
    token, key = genuine[which]
    head, encoded = token.rsplit(".", 1)
    signature = bytearray(base64url_decode(encoded))
    signature[position % len(signature)] ^= flip

    with pytest.raises(AssertionRejected):
        verify(f"{head}.{b64(bytes(signature))}", key)
