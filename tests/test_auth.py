"""Bearer-token authorization of Twirp calls, through a real server and the livekit-api client."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import jwt
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb

from egresskit.service.auth import EGRESS_GRANT, require_grant
from egresskit.service.twirp import TwirpService
from egresskit.tokens import create_token

KEY, SECRET = "auth-test-key", "auth-test-secret-0123456789abcdefgh"
OTHER_KEY, OTHER_SECRET = "second-key", "second-secret-0123456789abcdefghij"
SERVICE = egress_pb.DESCRIPTOR.services_by_name["Egress"]


class Lister:
    async def ListEgress(self, request, context):
        return egress_pb.ListEgressResponse()


@pytest.fixture
async def server(aiohttp_server):
    app = web.Application()
    keys = {KEY: SECRET, OTHER_KEY: OTHER_SECRET}
    TwirpService(SERVICE, Lister(), authorize=require_grant(keys, "video.roomRecord")).add_to(app)
    return await aiohttp_server(app, host="127.0.0.1")


async def _list(server, authorization: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with aiohttp.ClientSession() as session:
        async with session.post(
            server.make_url("/twirp/livekit.Egress/ListEgress"), data="{}", headers=headers
        ) as resp:
            return resp.status, await resp.json()


def _token(secret=SECRET, key=KEY, video=None, **times) -> str:
    now = int(time.time())
    claims = {"iss": key, "nbf": now - 1, "exp": now + 600, "video": {"roomRecord": True}}
    if video is not None:
        claims["video"] = video
    claims.update(times)
    return jwt.encode(claims, secret, algorithm="HS256")


def _unsigned(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_valid_tokens_pass(server):
    assert (await _list(server, f"Bearer {_token()}"))[0] == 200
    assert (await _list(server, f"Bearer {_token(OTHER_SECRET, OTHER_KEY)}"))[0] == 200
    # 60 s leeway either side of the validity window.
    now = int(time.time())
    assert (await _list(server, f"Bearer {_token(exp=now - 30)}"))[0] == 200
    assert (await _list(server, f"Bearer {_token(nbf=now + 30)}"))[0] == 200


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer not.a.jwt", "malformed token"),
        (f"Bearer {_token(secret='wrong-secret-0123456789abcdefghijk')}", "signature is invalid"),
        (f"Bearer {_token(key='nobody')}", "unknown API key"),
        (f"Bearer {_token(exp=int(time.time()) - 3600)}", "expired"),
        (f"Bearer {_token(nbf=int(time.time()) + 3600)}", "not valid yet"),
        (f"Bearer {_unsigned({'iss': KEY, 'exp': int(time.time()) + 600})}", "HS256"),
        (f"Bearer {_token(video={'roomJoin': True, 'room': 'x'})}", "roomRecord"),
        (f"Bearer {_token(video={'roomRecord': 'yes'})}", "roomRecord"),
    ],
)
async def test_bad_tokens_are_unauthenticated(server, authorization, says):
    status, body = await _list(server, authorization)
    assert status == 401
    assert body["code"] == "unauthenticated"
    assert says in body["msg"]
    assert SECRET not in body["msg"]


async def test_livekit_api_client_token_is_accepted_and_wrong_secret_refused(server):
    url = str(server.make_url("/"))
    good = api.LiveKitAPI(url, KEY, SECRET)
    bad = api.LiveKitAPI(url, KEY, "not-the-secret-0123456789abcdefghij")
    try:
        await good.egress.list_egress(api.ListEgressRequest())
        with pytest.raises(api.TwirpError) as caught:
            await bad.egress.list_egress(api.ListEgressRequest())
        assert (caught.value.code, caught.value.status) == ("unauthenticated", 401)
    finally:
        await good.aclose()
        await bad.aclose()


async def test_every_listed_grant_is_required(aiohttp_server):
    app = web.Application()
    authorize = require_grant({KEY: SECRET}, ["roomList", "roomAdmin"])
    TwirpService(SERVICE, Lister(), authorize=authorize).add_to(app)
    server = await aiohttp_server(app, host="127.0.0.1")
    only_list = create_token(KEY, SECRET, video={"roomList": True})
    status, body = await _list(server, f"Bearer {only_list}")
    assert (status, body["code"]) == (401, "unauthenticated")
    assert "roomAdmin" in body["msg"] and "roomList" not in body["msg"]
    both = create_token(KEY, SECRET, video={"roomList": True, "roomAdmin": True})
    assert (await _list(server, f"Bearer {both}"))[0] == 200


def test_grant_names_and_arguments():
    assert EGRESS_GRANT == "roomRecord"
    with pytest.raises(ValueError):
        require_grant({KEY: SECRET}, [])


def test_remembered_tokens_still_expire():
    from egresskit.tokens import TokenError, VerifiedTokens, create_token

    keys = {"k": "a-secret-long-enough-for-hs256-signing"}
    tokens = VerifiedTokens(keys, leeway=0)
    token = create_token("k", keys["k"], video={"roomRecord": True}, ttl=1)
    first = tokens.verify(token)
    assert tokens.verify(token) is first  # remembered, not verified again
    forged = create_token("k", "another-secret-long-enough-for-hs256", video={"roomRecord": True})
    for _ in range(2):  # a refused token is never remembered
        with pytest.raises(TokenError):
            tokens.verify(forged)
    time.sleep(first.expires_at - time.time() + 0.05)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token)
