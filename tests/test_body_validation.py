"""Request bodies: the compiled validator and jsonschema give one verdict.

:class:`BodyValidator` accepts on the compiled (fastjsonschema) check alone,
so a body it accepts that jsonschema refuses would slip past the reference.
These properties generate bodies near each request schema (its own field
names, values of every JSON type including the awkward ones: ``1.0``,
``True``, huge integers, strings with a trailing newline) and compare.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from keysvc.assertions import ASSERTION_TYPE
from keysvc.errors import InvalidRequest
from keysvc.http import schemas
from keysvc.http.schemas import BodyValidator

_TYPE = ASSERTION_TYPE
REQUEST_SCHEMAS = {
    "create client": schemas.CREATE_CLIENT,
    "patch client": schemas.PATCH_CLIENT,
    "rotate": schemas.ROTATE,
    "import key": schemas.IMPORT_KEY,
    "sign assertion": schemas.SIGN_ASSERTION,
    "create verifier": schemas.CREATE_VERIFIER,
    "verify": schemas.VERIFY,
    "empty": {"type": "object", "additionalProperties": False},
}
_CHECKERS = {
    name: (BodyValidator(schema), Draft202012Validator(schema))
    for name, schema in REQUEST_SCHEMAS.items()
}

_AWKWARD = st.sampled_from(
    [
        0, 1, -1, 1.0, 0.5, -0.0, True, False, None, 2**63, 3_153_600_000,
        3_153_600_001, "", " ", "90", "15m", " 12h ", "30d\n", "2w", "1x",
        "ES256", "RS256", "EdDSA", "Ed25519", "HS256", "none", "generated",
        "imported", "remote", "private_key_jwt", "client_secret_jwt",
        "https://as.example.com/token", "http://127.0.0.1/jwks", "a" * 129,
        "a" * 2049, ASSERTION_TYPE, ASSERTION_TYPE + "\n", "é", [], {},
    ]
)  # fmt: skip


def _values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        _AWKWARD,
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=3),
        ),
        max_leaves=8,
    )


def _bodies(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    names = [*sorted(schema.get("properties", {})), "extra"]
    near = st.dictionaries(st.sampled_from(names), _values(), max_size=len(names))
    return st.one_of(near, _values())


def _verdicts(
    validator: BodyValidator, reference: Draft202012Validator, body: Any
) -> tuple[bool, bool]:
    try:
        validator(body)
        accepted = True
    except InvalidRequest:
        accepted = False

    return accepted, isinstance(body, dict) and reference.is_valid(body)


@pytest.mark.parametrize("name", sorted(REQUEST_SCHEMAS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_validator_agrees_with_jsonschema(name: str, data: st.DataObject) -> None:
    body = data.draw(_bodies(REQUEST_SCHEMAS[name]))

    accepted, reference = _verdicts(*_CHECKERS[name], body)

    assert accepted == reference, body


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        (schemas.SIGN_ASSERTION, {"audience": "https://as.example.com/token"}),
        (schemas.SIGN_ASSERTION, {"audience": ["a", "b"], "lifetime": "5m"}),
        (schemas.SIGN_ASSERTION, {"audience": "a", "lifetime": 1.0}),
        (schemas.VERIFY, {"client_assertion": "x", "client_assertion_type": _TYPE}),
        (schemas.ROTATE, {}),
        (schemas.ROTATE, {"force": True}),
    ],
)  # fmt: skip
def test_valid_bodies_are_accepted(schema: dict[str, Any], body: Any) -> None:
    checkers = BodyValidator(schema), Draft202012Validator(schema)

    assert _verdicts(*checkers, body) == (True, True)


@pytest.mark.parametrize(
    ("schema", "body", "says"),
    [
        (schemas.SIGN_ASSERTION, {}, "missing required field(s) audience"),
        (schemas.SIGN_ASSERTION, {"audience": "a", "x": 1}, "unknown field(s) 'x'"),
        (schemas.SIGN_ASSERTION, {"audience": "a", "lifetime": True}, "lifetime"),
        (schemas.SIGN_ASSERTION, {"audience": []}, "audience"),
        (schemas.VERIFY, {"client_assertion": "x"}, "client_assertion_type"),
        (schemas.ROTATE, {"force": "yes"}, "force: must be of type boolean"),
        (schemas.ROTATE, [], "must be of type object"),
    ],
)  # fmt: skip
def test_a_refusal_names_the_place_and_the_rule(
    schema: dict[str, Any], body: Any, says: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        BodyValidator(schema)(body)

    assert says in refused.value.detail
