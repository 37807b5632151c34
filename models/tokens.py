"""Service-to-service tokens: issue, cache, verify, rotate keys.

The spec (074 §3.7.1 ``ServiceAuth``) signs with jsonwebtoken (RS256, ``expiresIn: '1h'``),
caches the signed token per ``serviceName-serviceId`` and reuses it while
``decoded.exp * 1000 > Date.now()``; ``verifyToken`` calls ``jwt.verify`` with no clock
tolerance. Every clock here is a float of simulated seconds on *some* host's clock: the
engine passes the issuer's, the caller's or the verifier's (skew = their difference).

- ``issue``: jsonwebtoken's claims (``iat = floor(Date.now()/1000)``, ``exp = iat + ttl``).
- ``held_token``: the token a long-running caller already holds when a run starts (its age
  drawn uniformly over the cache's refresh period: the steady state, see its docstring).
- ``SpecTokenCache``: the spec's reuse rule; ``RefreshAheadCache``: refresh ``margin``
  before exp with an optional single flight (google-auth style).
- ``verify``: PyJWT 2.15.1's or jsonwebtoken's exact boundaries, plus an unknown-key check.
- ``KeySet``: a verifier's JWKS cache as PyJWKClient 2.15.1 keeps it.

docs/mechanisms/tokens.md has the semantics, sources and where the two libraries differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection, Literal, Optional

Verdict = Literal["ok", "expired", "not_yet_valid", "issued_in_future", "unknown_key"]


@dataclass(frozen=True)
class Token:
    """A signed token's claims, in integer seconds (jsonwebtoken writes integers).

    ``verify`` also accepts non-integer claims (PyJWT truncates them with ``int()``).
    """

    kid: str
    iat: int
    exp: int
    nbf: Optional[int] = None


def js_date_now(now: float) -> int:
    """``Date.now()``: integer milliseconds (truncated) of a clock at ``now`` seconds."""
    return math.floor(now * 1000)


def js_clock_timestamp(now: float) -> int:
    """``Math.floor(Date.now() / 1000)``, jsonwebtoken's seconds clock (sign and verify)."""
    return math.floor(js_date_now(now) / 1000)


def issue(now_issuer: float, ttl_s: int = 3600, kid: str = "k1", not_before_s: int | None = None) -> Token:
    """``jwt.sign(payload, key, {expiresIn: ttl})`` at ``now_issuer`` on the issuer's clock.

    jsonwebtoken ``sign.js``: ``timestamp = payload.iat || Math.floor(Date.now() / 1000)``;
    ``payload.iat = timestamp``; ``exp = timespan(expiresIn, timestamp)`` which for '1h'
    is ``Math.floor(timestamp + 3600000 / 1000) = iat + 3600``; ``notBefore`` likewise.
    """
    iat = js_clock_timestamp(now_issuer)
    nbf = None if not_before_s is None else iat + not_before_s
    return Token(kid=kid, iat=iat, exp=iat + ttl_s, nbf=nbf)


def refresh_period_s(ttl_s: float, refresh_margin_s: float = 0.0) -> float:
    """How long a cached token is used before the cache replaces it: ``ttl_s`` for the
    spec's cache (reuse until exp), ``ttl_s - margin`` for a refresh-ahead cache (never
    negative)."""
    return max(0.0, float(ttl_s) - float(refresh_margin_s))


def held_token(now_signer: float, u: float, ttl_s: int = 3600, refresh_margin_s: float = 0.0,
               kid: str = "k0") -> Token:
    """The token a caller of a long-running platform holds at run time 0: issued ``age``
    seconds before ``now_signer`` (the signer's clock at time 0), ``age = u * period``
    with ``u`` uniform in [0, 1) from the caller's own stream and ``period`` the cache's
    :func:`refresh_period_s`.

    Why uniform: a cache replaced every ``period`` seconds is a renewal process with a
    fixed inter-renewal time, and the age of a renewal process observed at a time
    unrelated to it is distributed with density ``(1 - F(x)) / mean`` (the limiting
    age/"backward recurrence time" distribution: Ross, *Stochastic Processes*, 2nd ed.,
    1996, Sec. 3.4, "limiting distribution of the age"; Feller vol. II, Sec. XI.4), which
    for a constant ``period`` is uniform on ``[0, period)``. The spec's cache is renewed
    lazily (by the first call after exp), so its true period is ``ttl`` plus the wait for
    that call: about ``ttl`` for any caller that calls more than once a minute.
    """
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u={u!r} must be in [0, 1)")
    age = u * refresh_period_s(ttl_s, refresh_margin_s)
    return issue(now_signer - age, int(ttl_s), kid)


# --------------------------------------------------------------------------- verification


def verify(
    token: Token,
    now_verifier: float,
    leeway: float = 0,
    keys: Collection[str] = ("k1",),
    rules: Literal["pyjwt", "jsonwebtoken"] = "jsonwebtoken",
) -> Verdict:
    """The verdict a verifier at ``now_verifier`` (its own clock) gives ``token``.

    The key is resolved first (both libraries check the signature before any claim).
    Then, the first failing check in the library's own order:

    ``pyjwt`` (PyJWT 2.15.1 ``api_jwt._validate_claims``; ``now`` is the float
    ``datetime.now(tz=utc).timestamp()``, claims are ``int()``-truncated):
      iat: ``iat > now + leeway`` -> issued_in_future (ImmatureSignatureError, since 2.6.0);
      nbf: ``nbf > now + leeway`` -> not_yet_valid (ImmatureSignatureError);
      exp: ``exp <= now - leeway`` -> expired (ExpiredSignatureError).

    ``jsonwebtoken`` (v9 ``verify.js``; ``clockTimestamp = Math.floor(Date.now()/1000)``,
    ``clockTolerance`` = leeway, claims used as they are, no iat check without maxAge):
      nbf: ``nbf > clockTimestamp + tol`` -> not_yet_valid (NotBeforeError);
      exp: ``clockTimestamp >= exp + tol`` -> expired (TokenExpiredError).
    """
    if token.kid not in keys:
        return "unknown_key"
    if rules == "pyjwt":
        now = now_verifier
        if int(token.iat) > (now + leeway):
            return "issued_in_future"
        if token.nbf is not None and int(token.nbf) > (now + leeway):
            return "not_yet_valid"
        if int(token.exp) <= (now - leeway):
            return "expired"
        return "ok"
    if rules == "jsonwebtoken":
        clock = js_clock_timestamp(now_verifier)
        tol = leeway or 0
        if token.nbf is not None and token.nbf > clock + tol:
            return "not_yet_valid"
        if clock >= token.exp + tol:
            return "expired"
        return "ok"
    raise ValueError(f"unknown rules {rules!r}")


# --------------------------------------------------------------------------- caller caches


class SpecTokenCache:
    """The spec's ``ServiceAuth.tokenCache`` for one ``serviceName-serviceId``.

    Reuses the token while ``decoded.exp * 1000 > Date.now()`` on the caller's clock, i.e.
    up to the last millisecond before exp, with no margin for latency or skew. No single
    flight: every call that finds it stale fetches (in the spec, signs) a new one, and the
    last to finish is kept (``tokenCache.set``).
    """

    def __init__(self) -> None:
        self.token: Optional[Token] = None
        self._in_flight = 0

    @property
    def in_flight(self) -> bool:
        return self._in_flight > 0

    def valid(self, now_caller: float) -> bool:
        return self.token is not None and self.token.exp * 1000 > js_date_now(now_caller)

    def get(self, now_caller: float) -> Optional[Token]:
        """The token to send, or None: fetch one."""
        return self.token if self.valid(now_caller) else None

    def needs_fetch(self, now_caller: float) -> bool:
        return not self.valid(now_caller)

    def fetch_started(self, now: float) -> None:
        self._in_flight += 1

    def fetch_done(self, now: float, token: Optional[Token]) -> None:
        """``token`` None: the fetch failed, keep what we have."""
        self._in_flight = max(0, self._in_flight - 1)
        if token is not None:
            self.token = token


class RefreshAheadCache(SpecTokenCache):
    """Refresh ``margin_s`` before exp, optionally as a single flight.

    google-auth refreshes when ``now >= expiry - 3 min 45 s`` (``google/auth/_helpers.py``
    REFRESH_THRESHOLD); the reference suggests ``margin = max(threshold, skew + p99 issuer
    latency)``. A token is sent while still valid on the caller's clock (the spec's rule);
    from ``exp - margin`` a refresh is due. With ``single_flight`` only one refresh runs
    and the others keep using the current token while it is valid, else wait (``get``
    None and ``needs_fetch`` False). Without it every request in the window fetches.
    """

    def __init__(self, margin_s: float, single_flight: bool = True) -> None:
        super().__init__()
        self.margin = margin_s
        self.single_flight = single_flight

    def needs_fetch(self, now_caller: float) -> bool:
        if self.single_flight and self.in_flight:
            return False
        return self.token is None or now_caller >= self.token.exp - self.margin


# --------------------------------------------------------------------------- verifier keys


class KeySet:
    """A verifier's JWKS cache, as PyJWKClient 2.15.1 (``jwt/jwks_client.py``) keeps it.

    ``known(now, kid, fetch)``, with ``fetch()`` returning the issuer's current kids (or
    None / [] when the fetch fails: PyJWKClientConnectionError / PyJWKSetError):

    1. the cached set, unless absent or expired: ``now > fetched_at + ttl``
       (JWKSetCache.is_expired, strict); otherwise fetch (on failure: False, and the
       stale set is *not* used);
    2. if ``kid`` is not in it and ``refetch_on_unknown_kid``: refetch once, unless a
       fetch succeeded less than ``cooldown_s`` ago (``cooldown_duration``, default
       30 s in 2.15.1: every successful fetch starts it, the initial and expiry ones
       included). ``cooldown_s=0`` is the older "refetch on every unknown kid".

    The spec itself verifies against one static public key (no kid, no rotation):
    ``verify(..., keys={"k1"})`` without a KeySet.
    """

    def __init__(self, ttl_s: float = 300.0, refetch_on_unknown_kid: bool = True, cooldown_s: float = 30.0) -> None:
        self.ttl = ttl_s
        self.refetch_on_unknown_kid = refetch_on_unknown_kid
        self.cooldown = cooldown_s
        self.kids: Optional[list[str]] = None
        self.fetched_at: Optional[float] = None  # JWKSetCache timestamp
        self.last_fetch: Optional[float] = None  # _last_successful_fetch
        self.fetches = 0  # attempts, failed ones included

    def _fetch(self, now: float, fetch: Callable[[], Optional[list[str]]]) -> Optional[list[str]]:
        self.fetches += 1
        kids = fetch()
        if not kids:
            return None
        self.kids = list(kids)
        self.fetched_at = now
        self.last_fetch = now
        return self.kids

    def cached(self, now: float) -> Optional[list[str]]:
        if self.kids is None or self.fetched_at is None or now > self.fetched_at + self.ttl:
            return None
        return self.kids

    def known(self, now: float, kid: str, current_kids_at_issuer: Callable[[], Optional[list[str]]]) -> bool:
        kids = self.cached(now)
        if kids is None:
            kids = self._fetch(now, current_kids_at_issuer)
            if kids is None:
                return False
        if kid in kids:
            return True
        if not self.refetch_on_unknown_kid:
            return False
        if self.last_fetch is not None and now - self.last_fetch < self.cooldown:
            return False
        kids = self._fetch(now, current_kids_at_issuer)
        return kids is not None and kid in kids
