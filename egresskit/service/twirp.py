"""A Twirp server for any protobuf service, on aiohttp.

Twirp is small (POST, JSON or protobuf bodies, JSON errors), and the Python
Twirp packages either generate code per service or bring their own ASGI
server; routing straight from the `ServiceDescriptor` that livekit-protocol
ships lets one class serve `livekit.Egress` today and `livekit.RoomService`
later, inside the same aiohttp application.

Wire rules (LiveKit-compatible): JSON requests accept snake_case and
lowerCamelCase keys, enum names or numbers, int64 as strings or numbers, and
ignore unknown fields; JSON responses use snake_case keys and print every
unpopulated field (`null` for unset messages, like Go's protojson with
EmitUnpopulated); a protobuf request gets a protobuf response.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import Message

logger = logging.getLogger(__name__)

JSON = "application/json"
PROTOBUF = "application/protobuf"

# Twirp error codes and their HTTP statuses (the Twirp wire protocol, v7+).
HTTP_STATUS: Mapping[str, int] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

Authorize = Callable[[web.Request, str], Awaitable[Any]]


class TwirpError(Exception):
    """An error answered to the client as a Twirp error body."""

    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown Twirp error code {code!r}")
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})

    @property
    def status(self) -> int:
        """The HTTP status Twirp assigns to this error's code."""
        return HTTP_STATUS[self.code]

    def to_response(self) -> web.Response:
        """The error as an HTTP response (always JSON, whatever the request's content type)."""
        body = {"code": self.code, "msg": self.msg, "meta": self.meta}
        return _json_response(body, status=self.status)


@dataclass(frozen=True)
class TwirpContext:
    """What a handler may want to know about the call besides its request message."""

    http_request: web.Request
    method: str
    auth: Any  # whatever `authorize` returned (verified token claims), or None
    content_type: str = JSON  # the request's wire format, which the response uses too


@dataclass(frozen=True)
class Encoded:
    """A response a handler encoded itself, in its call's `context.content_type`.

    For answers built from cached encodings of their parts (see
    `RepeatedEncoding`); the router sends the bytes unchanged.
    """

    body: bytes


class TwirpService:
    """Serves one protobuf service: `POST {prefix}/<package>.<Service>/<Method>`.

    Each method is answered by the coroutine `handler.<Method>(request, context)`
    returning the method's output message; a handler without that attribute
    answers `unimplemented`. `authorize(http_request, method)` runs before the
    body is read and raises `TwirpError` to refuse the call.
    """

    def __init__(
        self,
        descriptor: ServiceDescriptor,
        handler: object,
        *,
        authorize: Authorize | None = None,
        prefix: str = "/twirp",
    ) -> None:
        self._descriptor = descriptor
        self._handler = handler
        self._authorize = authorize
        self.path_prefix = f"{prefix.rstrip('/')}/{descriptor.full_name}/"

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of this service (every HTTP method, so that wrong ones get bad_route)."""
        return [web.route("*", self.path_prefix + "{method}", self._handle)]

    def add_to(self, app: web.Application) -> None:
        """Mount the service's routes on `app`."""
        app.router.add_routes(self.routes())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._call(request)
        except TwirpError as error:
            return error.to_response()

    async def _call(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        method = self._descriptor.methods_by_name.get(name)
        if method is None:
            raise _bad_route(request, f"no handler for path {request.path!r}")
        if request.method != "POST":
            raise _bad_route(request, f"unsupported method {request.method} (only POST is allowed)")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in (JSON, PROTOBUF):
            raise _bad_route(
                request, f"unexpected Content-Type {content_type!r} (use {JSON} or {PROTOBUF})"
            )

        auth = None
        if self._authorize is not None:
            auth = await _guarded(self._authorize(request, name), f"authorizing {name}")
        implementation = getattr(self._handler, name, None)
        if implementation is None:
            raise TwirpError("unimplemented", f"{name} is not implemented")

        message = await _read_message(request, _message_class(method.input_type), content_type)
        context = TwirpContext(
            http_request=request, method=name, auth=auth, content_type=content_type
        )
        response = await _guarded(implementation(message, context), f"handling {name}")
        if isinstance(response, Encoded):
            if content_type == PROTOBUF:
                return web.Response(body=response.body, content_type=PROTOBUF)
            return web.Response(body=response.body, headers={"Content-Type": JSON})
        if not isinstance(response, _message_class(method.output_type)):
            logger.error(
                "%s handler returned %s, not %s",
                name,
                type(response).__name__,
                method.output_type.full_name,
            )
            raise TwirpError("internal", "internal error")
        if content_type == PROTOBUF:
            return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
        return _json_response(to_json_dict(response))


def to_json_dict(message: Message) -> dict[str, Any]:
    """`message` as Twirp JSON: snake_case keys, every unpopulated field present."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _add_nulls(message, data)
    return data


class RepeatedEncoding:
    """Encodes a `message_class` whose only populated field is the repeated message `field`
    from elements encoded one by one, so that a handler can keep the encoded elements of a
    long list and answer with a join (see `Encoded`). Bytes equal encoding the whole message.
    """

    def __init__(self, message_class: type[Message], field: str) -> None:
        self._json_head, self._json_tail = _json_frame(message_class, field)
        self._tag = _varint(message_class.DESCRIPTOR.fields_by_name[field].number << 3 | 2)

    def element(self, message: Message, content_type: str) -> bytes:
        """One element, ready to join."""
        if content_type == PROTOBUF:
            # No public protobuf call frames a pre-serialized element, and the framing is
            # short: the field's tag (wire type 2), a varint length, the element's bytes.
            data = message.SerializeToString()
            return self._tag + _varint(len(data)) + data
        return json.dumps(to_json_dict(message)).encode()

    def join(self, elements: list[bytes], content_type: str) -> bytes:
        if content_type == PROTOBUF:
            return b"".join(elements)
        return self._json_head + b", ".join(elements) + self._json_tail


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _json_frame(message_class: type[Message], field: str) -> tuple[bytes, bytes]:
    """The JSON of an empty `message_class`, split where the elements of `field` go."""
    data = to_json_dict(message_class())
    data[field] = []
    key = json.dumps(field)
    head, _, tail = json.dumps(data).partition(f"{key}: []")
    return f"{head}{key}: [".encode(), f"]{tail}".encode()


def from_json(body: bytes, message_class: type[Message]) -> Message:
    """Parse a Twirp JSON body (either key style; unknown fields ignored)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the JSON body must be an object")
    return json_format.ParseDict(data, message_class(), ignore_unknown_fields=True)


async def _read_message(
    request: web.Request, message_class: type[Message], content_type: str
) -> Message:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TwirpError("malformed", "the request body is too large") from None
    try:
        if content_type == JSON:
            return from_json(body, message_class)
        return message_class.FromString(body)
    except Exception as exc:  # any failure to decode is the client's body, never ours
        logger.debug("undecodable %s body: %s", content_type, type(exc).__name__)
        kind = "json" if content_type == JSON else "protobuf"
        raise TwirpError("malformed", f"the {kind} request could not be decoded") from None


async def _guarded(call: Awaitable[Any], doing: str) -> Any:
    """Await `call`; anything but a TwirpError becomes a generic `internal` error, logged here."""
    try:
        return await call
    except TwirpError:
        raise
    except Exception:
        logger.exception("unexpected error while %s", doing)
        raise TwirpError("internal", "internal error") from None


def _json_response(data: Mapping[str, Any], status: int = 200) -> web.Response:
    # Exactly `application/json`, without aiohttp's `; charset=utf-8`: the Node
    # server SDK only reads an error body whose Content-Type matches exactly.
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": JSON}
    )


def _bad_route(request: web.Request, msg: str) -> TwirpError:
    return TwirpError("bad_route", msg, {"twirp_invalid_route": f"{request.method} {request.path}"})


@functools.cache
def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@functools.cache
def _message_fields(descriptor: Descriptor) -> tuple[tuple[str, bool, bool, bool], ...]:
    """(name, repeated, in a oneof, map) for each message-typed field, computed once per type."""
    return tuple(
        (
            field.name,
            field.is_repeated,
            field.containing_oneof is not None,
            field.message_type.GetOptions().map_entry,
        )
        for field in descriptor.fields
        if field.message_type is not None
        and not field.message_type.full_name.startswith("google.protobuf.")
    )


def _add_nulls(message: Message, data: dict[str, Any]) -> None:
    """Add `null` for unset singular message fields outside oneofs, recursively."""
    for name, repeated, in_oneof, is_map in _message_fields(message.DESCRIPTOR):
        if is_map:
            continue
        if repeated:
            for child, child_data in zip(getattr(message, name), data.get(name, ()), strict=False):
                _add_nulls(child, child_data)
        elif message.HasField(name):
            _add_nulls(getattr(message, name), data[name])
        elif not in_oneof:
            data[name] = None
