"""Deciding a request's class at admission: header, else route, else key; capped by the key; a batch
line's own class wins; a header that names no class is the client's 400 naming the header."""

from __future__ import annotations

import pytest

from backends.contract.errors import InvalidRequest
from backends.contract.priority import DEFAULT, Priority
from gateway.auth import ANONYMOUS, Principal
from gateway.keys import KeyRecord
from gateway.priority_policy import HEADER, decide
from routing.config import RouteConfig

I, N, B = Priority.INTERACTIVE, Priority.NEAR_REAL_TIME, Priority.BATCH
PLAIN = RouteConfig(name="r", deployments=["a"])
NRT_ROUTE = RouteConfig(name="r", deployments=["a"], priority="near-real-time")


def key(**fields: object) -> Principal:
    return Principal(key=KeyRecord(id="k1", alias="k", **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("headers, route, principal, forced, expected", [
    ({}, PLAIN, key(), None, I),
    ({}, PLAIN, key(priority="near-real-time"), None, N),  # the key's own class
    ({}, NRT_ROUTE, key(), None, N),  # the route's, over the key's
    ({HEADER: "batch"}, NRT_ROUTE, key(), None, B),  # the header's, over the route's
    ({HEADER: " Near-Real-Time "}, PLAIN, key(), None, N),
    ({HEADER: "interactive"}, PLAIN, key(priority="batch"), None, B),  # capped by the key
    ({HEADER: "interactive"}, NRT_ROUTE, key(priority="near-real-time"), None, N),
    ({}, PLAIN, key(priority="batch"), None, B),
    ({HEADER: "interactive"}, PLAIN, key(), B, B),  # a batch line is batch whatever it says
    ({HEADER: "interactive"}, PLAIN, Principal(master=True), None, I),
], ids=["default", "key", "route", "header", "header-case", "capped", "capped-route", "key-batch", "forced",
        "master"])
def test_the_class_comes_from_header_route_or_key_capped_by_the_key(headers, route, principal, forced,
                                                                     expected) -> None:
    assert decide(headers, route, principal, forced).priority is expected


def test_the_tenant_is_the_key_and_its_weight_its_share() -> None:
    sched = decide({}, PLAIN, key(weight=3.0))
    assert (sched.tenant, sched.weight) == ("key:k1", 3.0)
    assert decide({}, PLAIN, key()).weight == 1.0
    assert decide({}, PLAIN, ANONYMOUS) is DEFAULT


@pytest.mark.parametrize("value", ["urgent", "", "0", "batch,interactive"])
def test_a_header_that_names_no_class_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        decide({HEADER: value}, PLAIN, key())
    assert err.value.status_code == 400 and err.value.param == HEADER and HEADER in err.value.message
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_an_unreadable_stored_class_is_the_default() -> None:
    assert decide({}, PLAIN, key(priority="bogus")).priority is I
