"""Tokens: verify() against PyJWT 2.15.1 (Hypothesis + freezegun), jsonwebtoken by golden
examples from its verify.js, caller caches under skew, and KeySet against PyJWKClient.

freezegun scans every loaded module when it starts (~50 ms here), so each test starts it
once and moves the frozen clock with ``move_to``. No module is on freezegun's ignore list:
an ignored caller within 5 frames makes ``time.monotonic()`` real again, which would give
PyJWKClient real time under Hypothesis (deadline=None, so Hypothesis needs no clock).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from unittest import mock

import jwt
import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from hailan_sim.models.tokens import (
    KeySet,
    RefreshAheadCache,
    SpecTokenCache,
    Token,
    held_token,
    issue,
    js_clock_timestamp,
    refresh_period_s,
    verify,
)

assert jwt.__version__ == "2.15.1"  # the boundaries below are this version's

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = 1_700_000_000
SECRET = "s" * 32  # HS256: the time checks do not depend on the algorithm


def at(now_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=now_us)


# ------------------------------------------------------------------ PyJWT property


def pyjwt_verdict(payload: dict, leeway: float) -> str:
    tok = jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})
    try:
        jwt.decode(tok, SECRET, algorithms=["HS256"], leeway=leeway)
    except jwt.ExpiredSignatureError:
        return "expired"
    except jwt.ImmatureSignatureError as e:
        return "issued_in_future" if "(iat)" in str(e) else "not_yet_valid"
    return "ok"


claim_offsets = st.integers(-3, 3)
fractions = st.sampled_from([0, 0, 0, 0.25, 0.5, 0.999999])  # integer claims most of the time
leeways = st.one_of(
    st.integers(0, 3),
    st.sampled_from([0.5, 1.5, 0.000001, 2.999999]),
    st.integers(0, 3_000_000).map(lambda us: us / 1e6),
)


@st.composite
def cases(draw):
    exp = T0 + draw(claim_offsets) + draw(fractions)
    iat = T0 + draw(claim_offsets) + draw(fractions)
    nbf = draw(st.none() | st.builds(lambda o, f: T0 + o + f, claim_offsets, fractions))
    leeway = draw(leeways)
    # put "now" next to one of the boundaries: claim +- leeway, or the integer part of it
    claims = [c for c in (exp, iat, nbf) if c is not None]
    claim = draw(st.sampled_from(claims))
    anchor = draw(st.sampled_from([claim + leeway, claim - leeway, int(claim) + leeway, int(claim) - leeway]))
    delta_us = draw(st.one_of(st.integers(-2, 2), st.integers(-2_000_000, 2_000_000)))
    now_us = round(anchor * 1e6) + delta_us
    return exp, iat, nbf, leeway, now_us


def test_verify_matches_pyjwt_at_the_boundaries():
    seen: dict[str, int] = {}
    with freeze_time(at(T0 * 10**6)) as frozen:

        @settings(max_examples=600, deadline=None)
        @given(cases())
        def check(case):
            exp, iat, nbf, leeway, now_us = case
            frozen.move_to(at(now_us))
            now = now_us / 1e6
            # what PyJWT will read: datetime.now(tz=timezone.utc).timestamp()
            assert datetime.now(tz=timezone.utc).timestamp() == now
            payload = {"exp": exp, "iat": iat} | ({} if nbf is None else {"nbf": nbf})
            expected = pyjwt_verdict(payload, leeway)
            got = verify(Token("k1", iat, exp, nbf), now, leeway, keys={"k1"}, rules="pyjwt")
            assert got == expected, (case, now)
            seen[got] = seen.get(got, 0) + 1

        check()
    # the generator reached every verdict, so the comparison covered each boundary
    assert set(seen) == {"ok", "expired", "not_yet_valid", "issued_in_future"}, seen


def test_pyjwt_exp_equal_to_floor_now_is_expired():
    # reference section 5 (verified): exp == floor(now) is already expired
    with freeze_time(at((T0 + 100) * 10**6 + 1)):  # now = T0 + 100.000001
        assert pyjwt_verdict({"exp": T0 + 100}, 0) == "expired"
        assert pyjwt_verdict({"exp": T0 + 101}, 0) == "ok"
    assert verify(Token("k1", T0, T0 + 100), T0 + 100.000001, 0, {"k1"}, "pyjwt") == "expired"
    assert verify(Token("k1", T0, T0 + 100), T0 + 99.999999, 0, {"k1"}, "pyjwt") == "ok"


# ------------------------------------------------------------------ jsonwebtoken


@pytest.mark.parametrize(
    "token, now, tol, verdict",
    [
        # clockTimestamp = Math.floor(Date.now() / 1000); expired iff clockTimestamp >= exp + tol
        (Token("k1", 0, 1000), 999.999, 0, "ok"),
        (Token("k1", 0, 1000), 1000.0, 0, "expired"),
        (Token("k1", 0, 1000), 1000.999, 1, "ok"),
        (Token("k1", 0, 1000), 1001.0, 1, "expired"),
        # fractional tolerance: floor(now) >= exp + 0.5 first holds at now = 1001
        (Token("k1", 0, 1000), 1000.7, 0.5, "ok"),
        (Token("k1", 0, 1000), 1001.0, 0.5, "expired"),
        # nbf > clockTimestamp + tol -> NotBeforeError
        (Token("k1", 0, 2000, nbf=1000), 999.999, 0, "not_yet_valid"),
        (Token("k1", 0, 2000, nbf=1000), 1000.0, 0, "ok"),
        (Token("k1", 0, 2000, nbf=1000), 998.0, 2, "ok"),
        # nbf is checked before exp
        (Token("k1", 0, 500, nbf=1000), 900.0, 0, "not_yet_valid"),
        # no iat check (only with maxAge): a token from the future is fine
        (Token("k1", 5000, 9000), 1000.0, 0, "ok"),
        # the key is resolved before any claim
        (Token("k2", 0, 1000), 5000.0, 0, "unknown_key"),
    ],
)
def test_jsonwebtoken_golden(token, now, tol, verdict):
    assert verify(token, now, tol, keys=["k1"], rules="jsonwebtoken") == verdict


def test_jsonwebtoken_and_pyjwt_differ_on_fractional_leeway_and_future_iat():
    t = Token("k1", 0, 1000)
    assert verify(t, 1000.7, 0.5, ["k1"], "pyjwt") == "expired"  # 1000 <= 1000.2
    assert verify(t, 1000.7, 0.5, ["k1"], "jsonwebtoken") == "ok"  # 1000 >= 1000.5 is false
    future = Token("k1", 1030, 4630)  # issued by a host 30 s ahead
    assert verify(future, 1000.0, 0, ["k1"], "pyjwt") == "issued_in_future"
    assert verify(future, 1000.0, 0, ["k1"], "jsonwebtoken") == "ok"
    assert verify(future, 1000.0, 30, ["k1"], "pyjwt") == "ok"
    # PyJWT truncates a fractional claim, jsonwebtoken does not
    frac = Token("k1", 0, 1000.5)
    assert verify(frac, 1000.2, 0, ["k1"], "pyjwt") == "expired"
    assert verify(frac, 1000.2, 0, ["k1"], "jsonwebtoken") == "ok"


@settings(max_examples=300, deadline=None)
@given(
    exp=st.integers(0, 20),
    iat=st.integers(0, 20),
    nbf=st.none() | st.integers(0, 20),
    leeway=st.integers(0, 3),
    now=st.integers(0, 30_000_000).map(lambda us: us / 1e6),
)
def test_libraries_agree_on_integer_claims_and_leeway_except_iat(exp, iat, nbf, leeway, now):
    t = Token("k1", iat, exp, nbf)
    py = verify(t, now, leeway, ["k1"], "pyjwt")
    js = verify(t, now, leeway, ["k1"], "jsonwebtoken")
    if py == "issued_in_future":
        # PyJWT stops at iat; jsonwebtoken goes on to nbf and exp
        assert verify(Token("k1", 0, exp, nbf), now, leeway, ["k1"], "pyjwt") == js
    else:
        assert py == js


# ------------------------------------------------------------------ issuing


def test_issue_follows_jsonwebtoken_sign():
    t = issue(1_000.9999, ttl_s=3600)
    assert (t.iat, t.exp, t.nbf) == (1000, 4600, None)  # floor(Date.now()/1000) + '1h'
    # Date.now() is integer ms: 1000.9999999 s reads as 1000999 ms -> iat 1000
    assert issue(1_000.9999999).iat == 1000
    assert issue(999.9999999999).iat == 999
    assert issue(5.0, not_before_s=10).nbf == 15
    assert js_clock_timestamp(-0.5) == -1


# ------------------------------------------------------------------ caches


def test_spec_cache_reuses_until_the_last_millisecond_so_latency_alone_causes_401s():
    cache = SpecTokenCache()
    assert cache.get(0.0) is None and cache.needs_fetch(0.0)
    cache.fetch_started(0.0)
    cache.fetch_done(0.0, issue(0.0))  # in the spec: jwt.sign in generateToken
    tok = cache.get(3599.999)
    assert tok is not None and tok.exp == 3600  # exp * 1000 > Date.now()
    assert cache.get(3600.0) is None
    # clocks in sync, 5 ms network: sent at 3599.999, verified at 3600.004
    assert verify(tok, 3600.004, 0, ["k1"], "jsonwebtoken") == "expired"


def test_spec_cache_with_caller_clock_behind_reuses_a_token_the_verifier_rejects():
    skew = 30.0  # caller (which signs, as ServiceAuth does) is 30 s behind the verifier
    cache = SpecTokenCache()
    results = []
    for step in range(0, 7300):  # one request per caller-second, two hours
        caller_now = float(step)
        tok = cache.get(caller_now)
        if tok is None:
            cache.fetch_started(caller_now)
            cache.fetch_done(caller_now, issue(caller_now))
            tok = cache.get(caller_now)
        results.append((caller_now, verify(tok, caller_now + skew, 0, ["k1"], "jsonwebtoken")))
    rejected = [t for t, v in results if v != "ok"]
    # exp = 3600 caller-time = 3600 verifier-time; the verifier rejects from its 3600
    # (caller 3570) and the caller keeps reusing until its own 3600: 30 rejections per hour
    assert rejected == [float(t) for t in range(3570, 3600)] + [float(t) for t in range(7170, 7200)]
    assert {v for t, v in results if v != "ok"} == {"expired"}
    # a PyJWT verifier draws the same line
    assert verify(issue(0.0), 3570.0 + skew - 1e-6, 0, ["k1"], "pyjwt") == "ok"
    assert verify(issue(0.0), 3570.0 + skew, 0, ["k1"], "pyjwt") == "expired"


def test_caller_clock_ahead_fails_pyjwt_verifiers_on_iat_but_not_jsonwebtoken():
    skew = -30.0  # caller 30 s ahead of the verifier
    tok = issue(1000.0)  # iat 1000 on the caller's clock = 970 on the verifier's
    for dt in (0.0, 29.999):
        assert verify(tok, 1000.0 + dt + skew, 0, ["k1"], "pyjwt") == "issued_in_future"
        assert verify(tok, 1000.0 + dt + skew, 0, ["k1"], "jsonwebtoken") == "ok"
    assert verify(tok, 1030.0 + skew, 0, ["k1"], "pyjwt") == "ok"
    # it never expires early for this verifier: the caller replaces it at its own exp
    assert verify(tok, 4599.999, 0, ["k1"], "pyjwt") == "ok"


def test_refresh_ahead_single_flight_golden():
    c = RefreshAheadCache(margin_s=225.0)  # google-auth: 3 min 45 s
    c.fetch_started(0.0)
    assert not c.needs_fetch(0.0) and c.get(0.0) is None  # first fetch in flight: wait
    c.fetch_done(0.2, issue(0.0))
    assert c.get(3374.9) is not None and not c.needs_fetch(3374.9)
    assert c.needs_fetch(3375.0)  # exp - margin
    c.fetch_started(3375.0)
    assert not c.needs_fetch(3376.0)  # one refresh in flight; others reuse the token
    assert c.get(3376.0).exp == 3600
    # a refresh slower than the margin: past exp the others must wait
    assert c.get(3600.0) is None and not c.needs_fetch(3600.0)
    c.fetch_done(3601.0, issue(3600.5))
    assert c.get(3601.0).exp == 7200 and not c.needs_fetch(3601.0)


def test_refresh_ahead_without_single_flight_fetches_per_request():
    c = RefreshAheadCache(margin_s=60.0, single_flight=False)
    c.fetch_done(0.0, issue(0.0))
    fetches = 0
    for t in range(3540, 3550):  # ten requests in the window while the refresh takes 20 s
        if c.needs_fetch(float(t)):
            c.fetch_started(float(t))
            fetches += 1
    assert fetches == 10 and c.in_flight
    c.fetch_done(3560.0, None)  # a failed fetch keeps the current token
    assert c.get(3561.0).exp == 3600


def test_spec_cache_has_no_single_flight():
    c = SpecTokenCache()
    starts = 0
    for t in (0.0, 0.001, 0.002):  # three concurrent calls before the first fetch returns
        if c.needs_fetch(t):
            c.fetch_started(t)
            starts += 1
    assert starts == 3 and c.in_flight
    for t in (0.01, 0.02, 0.03):
        c.fetch_done(t, issue(t))
    assert not c.in_flight and c.get(1.0).exp == 3600


# ------------------------------------------------------------------ key rotation: KeySet vs PyJWKClient


def jwks(kids):
    k = base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()
    return {"keys": [{"kty": "oct", "kid": kid, "k": k} for kid in kids]}


class Issuer:
    def __init__(self, kids):
        self.kids = list(kids)
        self.up = True
        self.http_fetches = 0

    def current(self):
        return list(self.kids) if self.up else None

    @contextmanager
    def serving(self):
        """PyJWKClient fetches through urllib's opener: answer it from here."""
        issuer = self

        class Opener:
            def open(self, request, timeout=None):
                issuer.http_fetches += 1
                if not issuer.up:
                    raise urllib.error.URLError("issuer down")
                return io.BytesIO(json.dumps(jwks(issuer.kids)).encode())

        with mock.patch.object(urllib.request, "build_opener", lambda *handlers: Opener()):
            yield


def pyjwk_known(client, kid):
    try:
        client.get_signing_key(kid)
        return True
    except jwt.PyJWKClientError:  # PyJWKClientConnectionError is a subclass
        return False


ops = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 5.0, 20.0, 29.5, 30.0, 60.0, 150.0, 299.5, 300.0, 301.0]),
        st.sampled_from(["current", "current", "previous", "bogus", "rotate", "retire", "down", "up"]),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("cooldown", [30.0, 0.0])
def test_keyset_matches_pyjwkclient(cooldown):
    with freeze_time(at(T0 * 10**6)) as frozen:

        @settings(max_examples=150, deadline=None)
        @given(ops)
        def check(trace):
            issuer = Issuer(["k0"])
            ours = KeySet(ttl_s=300.0, refetch_on_unknown_kid=True, cooldown_s=cooldown)
            now = float(T0)
            frozen.move_to(at(T0 * 10**6))
            with issuer.serving():
                client = jwt.PyJWKClient("https://issuer.internal/jwks", lifespan=300, cooldown_duration=cooldown)
                generation = 0
                for dt, op in trace:
                    now += dt
                    frozen.move_to(at(round(now * 1e6)))
                    if op == "rotate":  # publish a new key, keep the old one for a while
                        generation += 1
                        issuer.kids = [f"k{generation - 1}", f"k{generation}"]
                        continue
                    if op == "retire":  # drop every key but the current one
                        issuer.kids = [f"k{generation}"]
                        continue
                    if op in ("down", "up"):
                        issuer.up = op == "up"
                        continue
                    kid = {"current": f"k{generation}", "previous": f"k{generation - 1}", "bogus": "zz"}[op]
                    mine = ours.known(now, kid, issuer.current)
                    assert mine == pyjwk_known(client, kid), (trace, now, kid)
                    assert ours.fetches == issuer.http_fetches, (trace, now, kid)

        check()


def test_keyset_rotation_golden():
    issuer = Issuer(["k0"])
    # PyJWT 2.15.1 defaults: ttl 300 s, refetch on unknown kid after a 30 s cooldown
    ks = KeySet()
    assert ks.known(0.0, "k0", issuer.current) and ks.fetches == 1
    issuer.kids = ["k0", "k1"]  # rotation at t=10: new tokens carry k1
    assert not ks.known(10.0, "k1", issuer.current)  # 10 s since the last fetch: cooling down
    assert not ks.known(29.999, "k1", issuer.current) and ks.fetches == 1
    assert ks.known(30.0, "k1", issuer.current) and ks.fetches == 2
    # without the cooldown the first k1 token already refetches
    ks0 = KeySet(cooldown_s=0.0)
    issuer.kids = ["k0"]
    ks0.known(0.0, "k0", issuer.current)
    assert not ks0.known(5.0, "k1", issuer.current) and ks0.fetches == 2  # every unknown kid fetches
    issuer.kids = ["k0", "k1"]
    assert ks0.known(6.0, "k1", issuer.current) and ks0.fetches == 3
    # a cache that never refetches on an unknown kid fails until the set expires: 300 s
    nf = KeySet(refetch_on_unknown_kid=False)
    issuer.kids = ["k0"]
    nf.known(0.0, "k0", issuer.current)
    issuer.kids = ["k0", "k1"]
    assert not nf.known(300.0, "k1", issuer.current)  # expired only when now > fetched + 300
    assert nf.known(300.001, "k1", issuer.current)
    # an issuer outage after expiry fails even known kids: the stale set is not used
    issuer.up = False
    assert nf.known(600.0, "k1", issuer.current)
    assert not nf.known(600.002, "k1", issuer.current)
    issuer.up = True
    assert nf.known(601.0, "k1", issuer.current)


# --------------------------------------------------------------------------- steady state


def test_held_token_age_is_u_times_the_refresh_period():
    # spec cache: period = ttl; issued u * ttl before now on the signer's clock (floored).
    t = held_token(1000.0, 0.25, ttl_s=3600)
    assert (t.iat, t.exp, t.kid) == (100, 3700, "k0")
    # refresh-ahead: period = ttl - margin (a refresh replaces the token margin before exp)
    t = held_token(1000.0, 0.5, ttl_s=3600, refresh_margin_s=300)
    assert (t.iat, t.exp) == (1000 - 1650, 1000 - 1650 + 3600)
    assert refresh_period_s(3600, 300) == 3300 and refresh_period_s(10, 30) == 0
    assert held_token(5.0, 0.999, ttl_s=10, refresh_margin_s=30).iat == 5  # no period: fresh
    # u = 0: just issued; u -> 1: about to expire (or be refreshed) at 0
    assert held_token(0.0, 0.0, ttl_s=60).exp == 60
    assert held_token(0.0, 0.9999, ttl_s=60).exp == 0  # iat = floor(-59.994) = -60
    with pytest.raises(ValueError, match="must be in"):
        held_token(0.0, 1.0)
