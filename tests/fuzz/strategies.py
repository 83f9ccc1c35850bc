"""Hypothesis strategies over every RPC of the Registry, Scheduler and Aggregator, and a runner.

Each RPC is a ``Target``: a strategy of *cases* and a function that sends one case to live
servers and returns its ``Outcome`` (the status code, its details, and how many responses came
back). ``tests/fuzz/test_fuzz_rpcs.py`` runs a small budget of every target in CI and
``bench/fuzz.py`` runs thousands of cases against a cluster of processes.

Request messages are derived from the proto descriptors (``message_recipes``): every field gets
values of its type, with the extremes in good supply: integer bounds, NaN, infinities and
subnormals, empty, non-ASCII and very long strings (up to a few MiB, past gRPC's metadata limit
and etcd's request limit), repeated fields of random length, unknown enum values, unknown
fields and nested messages. A share of requests are random bytes that happen to parse
(``Raw``); bytes that do not parse are left out of the message targets and sent as they are by
the ``undecodable`` targets, which exercise the servers' deserialisation.

Some targets add structure so that cases get past the first check: ``PushGradient`` plays a
script of frames (``PushPlan``) built around the real tensor table of an open job, edited
(``ModelTable``: dropped, renamed, re-typed, re-shaped, re-coded or padded entries, absurd byte
lengths) and followed by payloads that are exact, truncated, overlong, non-finite, chunked
oddly, sent before the header, or abandoned mid-stream (``Stall``). Server streams are read for
a few messages under a short deadline, then cut (``StreamRead``).

Cases are *recipes*: plain data in which live ids, the open round and a task ticket appear as
``Known``, ``Current`` and ``Ticket`` and long values as ``Many``, turned into messages by a
``FuzzContext`` when they run. A shrunk example therefore prints short and replays against a
fresh cluster. Each case also says which ``Credential`` it sends: with authentication on, the
context holds the cluster key and gives most cases the right one for their RPC (a token of an
allowed role, a node's fresh proof), so that they reach the service, and the rest none, garbage,
a forged, expired or replayed one, or one for another role, node or RPC.
"""

from __future__ import annotations

import math
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import jwt
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from services.aggregator.server import AUTH_RULES as AGGREGATOR_RULES
from services.registry.server import AUTH_RULES as REGISTRY_RULES
from services.scheduler.server import AUTH_RULES as SCHEDULER_RULES
from tessera.common.auth import ClusterKey, NodeSigner, Role
from tessera.v1 import (
    aggregator_pb2,
    common_pb2,
    registry_pb2,
    scheduler_pb2,
    tensor_pb2,
)
from tessera.wire.codecs import codec_by_wire_id, dtype_from_name
from tessera.wire.codecs.base import numel

__all__ = [
    "ALLOWED_CODES",
    "RIGHT",
    "Case",
    "Credential",
    "CLIENT_OPTIONS",
    "DECODE_STATS",
    "SERVICES",
    "Current",
    "Frame",
    "FuzzContext",
    "Known",
    "Limits",
    "Many",
    "ModelTable",
    "Outcome",
    "Payload",
    "PushPlan",
    "Raw",
    "Stall",
    "StreamRead",
    "Target",
    "Ticket",
    "Undecodable",
    "describe",
    "health_status",
    "message_recipes",
    "targets",
]

FD = pb_descriptor.FieldDescriptor
M = TypeVar("M", bound=Message)

# The statuses a well-behaved server may answer a hostile or clumsy client with. DEADLINE_EXCEEDED
# and CANCELLED come from streams the client cuts short; anything else (INTERNAL, UNKNOWN, and
# UNAVAILABLE from a server that died or blames a dependency for a bad request) is a failure.
ALLOWED_CODES = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
    }
)

# Service key -> proto service descriptor.
SERVICES: dict[str, pb_descriptor.ServiceDescriptor] = {
    "registry": registry_pb2.DESCRIPTOR.services_by_name["Registry"],
    "scheduler": scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"],
    "aggregator": aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"],
}

Metadata = tuple[tuple[str, str | bytes], ...]

# Which roles may call each method, as the services declare it.
AUTH_RULES: dict[str, frozenset[Role]] = {**REGISTRY_RULES, **SCHEDULER_RULES, **AGGREGATOR_RULES}

UNARY_DEADLINE = 30.0
# Clients accept large answers and trailers, so a status is seen as the server sent it.
CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_metadata_size", 8 << 20),
    ("grpc.absolute_max_metadata_size", 8 << 20),
]
# A payload step never sends more than this, whatever the header declares.
PAYLOAD_CAP = 8 << 20
# At most this many chunk frames per payload step (larger chunks for larger payloads).
MAX_PAYLOAD_FRAMES = 64


@dataclass(frozen=True)
class Limits:
    """How large generated values may get.

    Attributes:
        max_text: the longest string (characters); past 16 KiB an echoed string overflows
            gRPC's metadata limit, past 1.5 MiB an id overflows etcd's request limit.
        max_bytes: the longest bytes value.
        max_repeat: the longest repeated field built from one repeated value.
        max_layers: the most hidden layers of a job spec built from one repeated width.
    """

    max_text: int = 3_500_000
    max_bytes: int = 5 << 20
    max_repeat: int = 3_000
    max_layers: int = 300


# -- symbolic values in recipes ------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A live id of the context: ``kind`` is "node" or "job"; ``index`` is taken modulo."""

    kind: str
    index: int


@dataclass(frozen=True)
class Current:
    """The open round (model version) of the job the message names."""


@dataclass(frozen=True)
class Many:
    """``unit`` repeated ``count`` times: a long string or bytes value, or a long repeated field."""

    unit: Any
    count: int

    def expand(self) -> Any:
        """The value this stands for."""
        if isinstance(self.unit, str | bytes):
            return self.unit * self.count
        return [self.unit] * self.count


@dataclass(frozen=True)
class Raw:
    """A message given as random bytes that parse as it."""

    data: bytes


@dataclass(frozen=True)
class Ticket:
    """A valid task ticket for the contribution the header describes."""


@dataclass(frozen=True)
class Credential:
    """The credentials a case sends when authentication is on.

    ``kind`` is "right" (a valid credential of a role the method allows: for a node, a fresh
    proof for the node the request names), "none", "garbage" (``token`` as it is), "wrong_role",
    "forged" (signed with another key), "expired", "other_node" (a proof for another node),
    "other_method" (a proof made for another RPC) or "replayed" (a proof already used).
    """

    kind: str
    token: str = ""


RIGHT = Credential("right")


@dataclass(frozen=True)
class Case:
    """One generated case: what to send (``body``) and with which credentials."""

    body: Any
    credential: Credential = RIGHT


def credentials() -> st.SearchStrategy[Credential]:
    """Mostly the right credentials (so that cases reach the service), else wrong ones."""
    wrong = st.one_of(
        st.sampled_from(
            [
                Credential(kind)
                for kind in (
                    "none",
                    "wrong_role",
                    "forged",
                    "expired",
                    "other_node",
                    "other_method",
                    "replayed",
                )
            ]
        ),
        st.builds(
            Credential,
            st.just("garbage"),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
        ),
    )
    return mostly(st.just(RIGHT), wrong, times=8)


# -- generic strategies from descriptors ---------------------------------------------------------

_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
INT_RANGES: dict[int, tuple[int, int]] = {
    FD.TYPE_INT32: _INT32,
    FD.TYPE_SINT32: _INT32,
    FD.TYPE_SFIXED32: _INT32,
    FD.TYPE_UINT32: _UINT32,
    FD.TYPE_FIXED32: _UINT32,
    FD.TYPE_INT64: _INT64,
    FD.TYPE_SINT64: _INT64,
    FD.TYPE_SFIXED64: _INT64,
    FD.TYPE_UINT64: _UINT64,
    FD.TYPE_FIXED64: _UINT64,
}
_INT_EDGES: tuple[int, ...] = (0, 1, 2, 3, 7, 8, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31)
_INT_EDGES += (2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1)
_FLOAT_EDGES = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    3.4028235e38,
    65504.0,
    2.0**53,
    1e9,
)
# Words the services give meaning to, so that generated specs and tables sometimes make sense.
_WORDS = (
    "",
    " ",
    "\x00",
    "/",
    "..",
    "../../etc",
    "a/b",
    "%s%n",
    "\ufeff",
    "\u202e",
    "\U0001f9e9",
    *(
        "mlp cnn gpt digits adam sgd mean median trimmed_mean krum centered_clip none fp16 bf16 "
        "int8 topk min_min max_min sufferage lpt round_robin genetic reassign drop float32 "
        "float16 bfloat16 float64 int64 uint8 bool complex64 0.weight 1.bias f m"
    ).split(),
)
# Any Unicode scalar value: protobuf strings are UTF-8, so surrogates cannot be sent.
_CHARS = st.characters(codec="utf-8")


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], often at an edge (bounds, powers of two, 0, +-1)."""
    edges = sorted(
        {e for e in (*_INT_EDGES, *(-e for e in _INT_EDGES), low, high, low + 1, high - 1)},
        key=lambda e: (abs(e), e),
    )
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]),
        st.integers(max(low, -3), min(high, 64)),
        st.integers(low, high),
    )


def doubles() -> st.SearchStrategy[float]:
    """Any double, often NaN, an infinity, a subnormal or a bound."""
    return st.one_of(st.sampled_from(_FLOAT_EDGES), st.floats())


def texts(limits: Limits) -> st.SearchStrategy[Any]:
    """Short, special, non-ASCII and very long strings (the long ones as ``Many``)."""
    return st.one_of(
        st.sampled_from(_WORDS),
        st.text(_CHARS, max_size=20),
        st.text(st.characters(codec="utf-8", min_codepoint=0x80), min_size=1, max_size=8),
        st.integers(150, 300).map(lambda n: Many("h", n)),
        st.integers(1_000, limits.max_text).map(lambda n: Many("x", n)),
    )


def byte_strings(limits: Limits) -> st.SearchStrategy[Any]:
    """Short random bytes, and long runs (as ``Many``)."""
    return st.one_of(
        st.binary(max_size=64),
        st.integers(65, limits.max_bytes).map(lambda n: Many(b"\x00", n)),
        st.tuples(st.binary(min_size=1, max_size=8), st.integers(2, 100_000)).map(
            lambda t: Many(t[0], t[1])
        ),
    )


def known(kind: str) -> st.SearchStrategy[Known]:
    """A live id of ``kind``."""
    return st.integers(0, 7).map(lambda i: Known(kind, i))


def mostly(
    main: st.SearchStrategy[Any], other: st.SearchStrategy[Any], times: int = 3
) -> st.SearchStrategy[Any]:
    """``main`` ``times`` times as often as ``other``.

    (``one_of`` cannot weigh: it drops repeated branches.)
    """
    return st.integers(0, times).flatmap(lambda i: main if i < times else other)


def field_overrides(limits: Limits) -> dict[str, st.SearchStrategy[Any]]:
    """Values for fields that name live things, by field name (any message)."""
    uint64 = integers(*_UINT64)
    uint32 = integers(*_UINT32)
    return {
        "node_id": st.one_of(known("node"), texts(limits)),
        "job_id": st.one_of(known("job"), texts(limits)),
        "round": st.one_of(st.just(Current()), uint32),
        "base_version": st.one_of(st.just(Current()), uint64),
        "version": st.one_of(st.just(Current()), st.just(0), uint64),
        # Widths past the first few hundred make valid models that cost memory for nothing;
        # ``Limits.max_layers`` bounds depth, and invalid widths come from the extremes.
        "hidden_sizes": st.one_of(
            st.lists(st.integers(1, 256), max_size=3),
            st.lists(uint32, max_size=3),
            st.tuples(st.integers(1, 2), st.integers(4, limits.max_layers)).map(
                lambda t: Many(t[0], t[1])
            ),
        ),
    }


def _scalar(fd: pb_descriptor.FieldDescriptor, limits: Limits) -> st.SearchStrategy[Any]:
    if fd.type in INT_RANGES:
        return integers(*INT_RANGES[fd.type])
    if fd.type == FD.TYPE_DOUBLE:
        return doubles()
    if fd.type == FD.TYPE_FLOAT:
        return st.one_of(st.sampled_from(_FLOAT_EDGES[:9]), st.floats(width=32))
    if fd.type == FD.TYPE_BOOL:
        return st.booleans()
    if fd.type == FD.TYPE_STRING:
        return texts(limits)
    if fd.type == FD.TYPE_BYTES:
        return byte_strings(limits)
    if fd.type == FD.TYPE_ENUM:
        numbers = [v.number for v in _enum(fd).values]
        return st.one_of(st.sampled_from(numbers), integers(*_INT32))
    raise TypeError(f"unsupported field type {fd.type} of {fd.full_name}")


def _is_map(fd: pb_descriptor.FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _message_type(fd: pb_descriptor.FieldDescriptor) -> pb_descriptor.Descriptor:
    if fd.message_type is None:
        raise TypeError(f"{fd.full_name} is not a message field")
    return fd.message_type


def _enum(fd: pb_descriptor.FieldDescriptor) -> pb_descriptor.EnumDescriptor:
    if fd.enum_type is None:
        raise TypeError(f"{fd.full_name} is not an enum field")
    return fd.enum_type


def _fields(desc: pb_descriptor.Descriptor) -> dict[str, pb_descriptor.FieldDescriptor]:
    return dict(desc.fields_by_name)


def _keyed(name: str) -> Callable[[Any], dict[str, Any]]:
    def wrap(value: Any) -> dict[str, Any]:
        return {name: value}

    return wrap


def field_values(
    fd: pb_descriptor.FieldDescriptor,
    *,
    depth: int,
    limits: Limits,
    overrides: Mapping[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """Values for one field: scalars, nested recipes, lists or dicts."""
    if fd.name in overrides:
        return overrides[fd.name]
    if _is_map(fd):
        entry = _fields(_message_type(fd))
        key_fd, value_fd = entry["key"], entry["value"]
        return st.dictionaries(
            _scalar(key_fd, limits),
            field_values(value_fd, depth=depth - 1, limits=limits, overrides=overrides),
            max_size=4,
        )
    if fd.message_type is not None:
        element: st.SearchStrategy[Any] = (
            message_recipes(_message_type(fd), depth=depth - 1, limits=limits, overrides=overrides)
            if depth > 0
            else st.just({})
        )
    else:
        element = _scalar(fd, limits)
    if not fd.is_repeated:
        return element
    return st.one_of(
        st.lists(element, max_size=5),
        st.tuples(element, st.integers(6, limits.max_repeat)).map(lambda t: Many(t[0], t[1])),
    )


def message_recipes(
    desc: pb_descriptor.Descriptor,
    *,
    depth: int = 3,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass, safe default
    overrides: Mapping[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Recipes for messages of ``desc``: any subset of fields, at most one member per oneof."""
    if overrides is None:
        overrides = field_overrides(limits)
    plain = {
        name: field_values(fd, depth=depth, limits=limits, overrides=overrides)
        for name, fd in _fields(desc).items()
        if fd.containing_oneof is None
    }
    base = st.fixed_dictionaries({}, optional=plain)
    choices: list[st.SearchStrategy[dict[str, Any]]] = []
    for oneof in desc.oneofs:
        members = [
            field_values(
                fd,
                depth=depth,
                limits=limits,
                overrides=overrides,
            ).map(_keyed(fd.name))
            for fd in oneof.fields
        ]
        choices.append(st.one_of(st.just({}), *members))
    if not choices:
        return base
    return st.tuples(base, *choices).map(lambda parts: {k: v for p in parts for k, v in p.items()})


def _parses(cls: type[Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except DecodeError:
        return False
    return True


# Random byte strings tried as request messages: parsed, or rejected by the client's parser
# (DecodeError) and left out of the message targets.
DECODE_STATS: dict[str, int] = {"parsed": 0, "decode_error": 0}


def _parses_counted(cls: type[Message], data: bytes) -> bool:
    parsed = _parses(cls, data)
    DECODE_STATS["parsed" if parsed else "decode_error"] += 1
    return parsed


def raw_recipes(cls: type[Message]) -> st.SearchStrategy[Raw]:
    """Random bytes that parse as ``cls`` (unknown fields, odd encodings, repeated scalars)."""
    return st.binary(min_size=1, max_size=96).filter(lambda b: _parses_counted(cls, b)).map(Raw)


def request_recipes(cls: type[Message], limits: Limits) -> st.SearchStrategy[Any]:
    """Requests of ``cls``: structured recipes, and now and then parsed random bytes."""
    desc = cast(pb_descriptor.Descriptor, cls.DESCRIPTOR)
    return mostly(message_recipes(desc, limits=limits), raw_recipes(cls))


# -- recipes to messages -------------------------------------------------------------------------


class Resolver:
    """Turns recipes into messages, resolving ``Known``, ``Current`` and ``Many``."""

    def __init__(self, context: FuzzContext, service: str) -> None:
        self._context = context
        self._service = service
        self._current: dict[str, int] = {}

    def message(self, cls: type[M], recipe: Any) -> M:
        """A message of ``cls`` from ``recipe`` (a dict, ``Raw`` or a message)."""
        if isinstance(recipe, Raw):
            return cls.FromString(recipe.data)
        if isinstance(recipe, Message):
            return cls.FromString(recipe.SerializeToString())
        msg = cls()
        self._fill(msg, recipe)
        return msg

    def _scalar(self, value: Any) -> Any:
        if isinstance(value, Known):
            return self._context.known(self._service, value)
        if isinstance(value, Many):
            return value.expand()
        return value

    def _fill(self, msg: Message, recipe: Mapping[str, Any]) -> None:
        fields = _fields(cast(pb_descriptor.Descriptor, msg.DESCRIPTOR))
        deferred: list[str] = []
        for name, value in recipe.items():
            fd = fields[name]
            if isinstance(value, Current | Ticket):
                deferred.append(name)
            elif isinstance(value, ModelTable):
                getattr(msg, name).extend(self._context.table(value))
            elif _is_map(fd):
                self._fill_map(getattr(msg, name), fd, value)
            elif fd.is_repeated:
                items = value.expand() if isinstance(value, Many) else value
                container = getattr(msg, name)
                if fd.message_type is not None:
                    for item in items:
                        self._fill(container.add(), item)
                else:
                    container.extend(self._scalar(v) for v in items)
            elif fd.message_type is not None:
                sub = getattr(msg, name)
                sub.SetInParent()
                self._fill(sub, value)
            else:
                setattr(msg, name, self._scalar(value))
        for name in deferred:
            if isinstance(recipe[name], Ticket):
                continue
            job_id = getattr(msg, "job_id", "")
            if job_id not in self._current:
                self._current[job_id] = self._context.current(self._service, job_id)
            setattr(msg, name, self._current[job_id])
        for name in deferred:
            if isinstance(recipe[name], Ticket):
                setattr(msg, name, self._context.ticket(msg))

    def _fill_map(
        self, container: Any, fd: pb_descriptor.FieldDescriptor, value: Mapping[Any, Any]
    ) -> None:
        value_fd = _fields(_message_type(fd))["value"]
        for key, item in value.items():
            if value_fd.message_type is not None:
                self._fill(container[self._scalar(key)], item)
            else:
                container[self._scalar(key)] = self._scalar(item)


# -- gradient streams ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recode:
    """Set entry ``index``'s codec; ``length`` None keeps the length consistent with it.

    ``keep`` is the fraction of entries a consistent top-k payload declares.
    """

    index: int
    codec: int
    length: int | None
    keep: float = 0.01


@dataclass(frozen=True)
class Edit:
    """Change one field of entry ``index`` (``field`` "drop" and "dup" take no value)."""

    index: int
    field: str
    value: Any = None


@dataclass(frozen=True)
class Pad:
    """Append ``count`` junk entries: absurd tables."""

    count: int
    unique: bool


@dataclass(frozen=True)
class ModelTable:
    """The tensor table of the model (of the job named), with edits applied in order."""

    edits: tuple[Recode | Edit | Pad, ...] = ()


@dataclass(frozen=True)
class Payload:
    """Payload chunks sized from the table declared by the latest header.

    ``mode`` is "exact", "short" (``fraction`` of it) or "long" (``extra`` bytes beyond it);
    ``fill`` is the repeated byte pattern; ``chunk`` the chunk size asked for.
    """

    mode: str
    fill: bytes
    chunk: int
    fraction: float = 0.5
    extra: int = 1


@dataclass(frozen=True)
class Frame:
    """One frame given as a ``GradientFrame`` recipe (a header, a chunk, or neither)."""

    recipe: Any


@dataclass(frozen=True)
class Stall:
    """Stop sending without closing the stream; the deadline ends the call."""


@dataclass(frozen=True)
class PushPlan:
    """A client stream for ``PushGradient``."""

    steps: tuple[Frame | Payload | Stall, ...]
    deadline: float


@dataclass(frozen=True)
class SmallPush:
    """A ``PushSmallGradient`` request: a header recipe (None: no header) and its payload,
    sized from the header's table (``Payload``) or as given."""

    header: dict[str, Any] | None
    payload: Payload | bytes


def _f32(value: float) -> bytes:
    return struct.pack("<f", value)


_FILLS = (
    b"\x00\x00\x00\x00",
    _f32(1.0),
    _f32(-0.001),
    _f32(math.nan),
    _f32(math.inf),
    _f32(3.0e38),
    b"\x00\x00\x80\x7f\x00\x00\xc0\xff",
)


def table_edits(limits: Limits) -> st.SearchStrategy[Recode | Edit | Pad]:
    """Edits of a real tensor table."""
    index = st.integers(0, 7)
    codec = st.one_of(st.integers(0, 6), integers(*_INT32))
    return st.one_of(
        st.builds(
            Recode,
            index,
            codec,
            st.one_of(st.none(), integers(*_UINT64)),
            st.sampled_from([0.0, 0.01, 0.5, 1.0, 1.01]),
        ),
        st.builds(Edit, index, st.sampled_from(["drop", "dup"])),
        st.builds(Edit, index, st.just("name"), texts(limits)),
        st.builds(Edit, index, st.just("dtype"), texts(limits)),
        st.builds(
            Edit,
            index,
            st.just("shape"),
            st.one_of(
                st.lists(integers(*_UINT64), max_size=10),
                st.tuples(integers(*_UINT64), st.integers(9, 1000)).map(lambda t: Many(t[0], t[1])),
            ),
        ),
        st.builds(Edit, index, st.just("byte_length"), integers(*_UINT64)),
        st.builds(
            Pad, st.one_of(st.integers(1, 5), st.sampled_from([99_999, 100_001])), st.booleans()
        ),
    )


def contribution_headers(limits: Limits) -> st.SearchStrategy[dict[str, Any]]:
    """Near-valid ``ContributionHeader`` recipes: live ids and the real table, a few fields off."""
    uint32 = integers(*_UINT32)
    uint64 = integers(*_UINT64)
    return st.fixed_dictionaries(
        {
            "job_id": mostly(known("job"), texts(limits)),
            "round": mostly(st.just(Current()), uint32),
            "task_index": mostly(st.integers(0, 63), uint32),
            "node_id": mostly(known("node"), texts(limits)),
            "base_version": mostly(st.just(Current()), uint64),
            "samples": mostly(st.integers(1, 10_000), uint64),
            "loss": doubles(),
            "ticket": mostly(st.just(Ticket()), texts(limits), times=5),
            "tensors": mostly(
                st.just(ModelTable()),
                st.lists(table_edits(limits), min_size=1, max_size=3).map(
                    lambda edits: ModelTable(tuple(edits))
                ),
                times=2,
            ),
        }
    )


def _payloads() -> tuple[st.SearchStrategy[Payload], st.SearchStrategy[Payload]]:
    """Payloads exactly as declared, and payloads exact, short or long."""
    fills = st.one_of(st.sampled_from(_FILLS), st.binary(min_size=1, max_size=16))
    chunks = st.sampled_from([1 << 20, 1, 7, 4096, 65536, (4 << 20) + 1])
    exact = st.builds(Payload, mode=st.just("exact"), fill=fills, chunk=chunks)
    payload = st.builds(
        Payload,
        mode=st.sampled_from(["exact", "short", "long"]),
        fill=fills,
        chunk=chunks,
        fraction=st.floats(0.0, 0.999),
        extra=st.integers(1, 5000),
    )
    return exact, payload


def push_plans(limits: Limits) -> st.SearchStrategy[PushPlan]:
    """Gradient streams: near-valid headers and payloads, junk around them, or random frames."""
    header = contribution_headers(limits)
    exact, payload = _payloads()
    frame_recipe = message_recipes(aggregator_pb2.GradientFrame.DESCRIPTOR, limits=limits)
    junk = st.one_of(
        st.builds(Frame, st.fixed_dictionaries({"chunk": st.binary(max_size=64)})),
        st.just(Frame({})),
        st.builds(Frame, frame_recipe),
    )
    near_valid = st.tuples(
        mostly(st.just([]), st.lists(junk, min_size=1, max_size=1), times=5),
        header.map(lambda h: [Frame({"header": h})]),
        mostly(exact.map(lambda p: [p]), st.lists(payload, max_size=3), times=2),
        mostly(
            st.just([]),
            st.lists(
                st.one_of(junk, st.builds(Frame, header.map(lambda h: {"header": h}))),
                min_size=1,
                max_size=1,
            ),
        ),
        mostly(st.just([]), st.just([Stall()]), times=5),
    ).map(lambda parts: tuple(step for part in parts for step in part))
    random_frames = st.lists(st.one_of(junk, st.builds(Frame, frame_recipe)), max_size=6).map(tuple)
    steps = mostly(near_valid, random_frames, times=5)
    return st.builds(PushPlan, steps, st.sampled_from([5.0, 5.0, 5.0, 0.05, 0.3]).map(float)).map(
        _short_deadline_for_stalls
    )


def small_pushes(limits: Limits) -> st.SearchStrategy[SmallPush]:
    """Whole contributions in one message: near-valid headers with payloads sized from their
    tables, or no header, or junk bytes."""
    exact, payload = _payloads()
    return st.builds(
        SmallPush,
        mostly(contribution_headers(limits), st.none(), times=8),
        mostly(exact, st.one_of(payload, st.binary(max_size=64)), times=2),
    )


def _short_deadline_for_stalls(plan: PushPlan) -> PushPlan:
    if any(isinstance(s, Stall) for s in plan.steps) and plan.deadline > 0.3:
        return PushPlan(plan.steps, 0.3)
    return plan


def _payload_chunks(step: Payload, declared: int) -> Iterator[bytes]:
    if step.mode == "exact":
        total = declared
    elif step.mode == "short":
        total = int(declared * step.fraction)
    else:
        total = declared + step.extra
    total = min(total, PAYLOAD_CAP)
    chunk = max(step.chunk, -(-total // MAX_PAYLOAD_FRAMES), 1)
    pattern = step.fill * (-(-min(chunk, total) // len(step.fill)) + 1)
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        yield pattern[:size]
        sent += size


# -- cases of other kinds ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRead:
    """Open a server stream, read at most ``read`` messages (None: all) within ``deadline``."""

    request: Any
    deadline: float
    read: int | None


@dataclass(frozen=True)
class Undecodable:
    """Bytes that do not parse as the method's request, sent as they are."""

    method: str
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """What a case got back: the status code name, its details, and the responses received."""

    code: str
    details: str = ""
    responses: int = 0


@dataclass(frozen=True)
class Target:
    """One RPC under fuzz: its name ("Service/Method"), its service key, cases and runner."""

    name: str
    service: str
    cases: st.SearchStrategy[Case]
    run: Callable[[FuzzContext, Case], Outcome]


def _outcome(exc: grpc.RpcError, responses: int = 0) -> Outcome:
    call = cast(grpc.Call, exc)
    details = call.details() or ""
    return Outcome(call.code().name, details[:500], responses)


def _classes(method: pb_descriptor.MethodDescriptor) -> tuple[type[Message], type[Message]]:
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def _path(service: str, method: str) -> str:
    return f"/{SERVICES[service].full_name}/{method}"


def _node_of(request: Message) -> str | None:
    """The node a request speaks for (its ``node_id``), or None if it names none."""
    if "node_id" in request.DESCRIPTOR.fields_by_name:
        return str(cast(Any, request).node_id)
    return None


# -- the live context ----------------------------------------------------------------------------


_VALID_PROFILE = common_pb2.NodeProfile(
    hostname="fuzz", cpu_cores=2, memory_bytes=8 << 30, throughput=1000.0, bandwidth=1e8
)


class FuzzContext:
    """Live ids the cases refer to, on the servers behind ``channels``.

    ``start`` registers two nodes (kept alive by a heartbeat thread, registered again if a case
    deregisters them), opens two jobs on the aggregator (mean and median rules) and submits
    three to the scheduler: one running (its tasks go to the known nodes), one waiting for more
    nodes than exist, and one cancelled. ``refresh`` replaces scheduler jobs that ended.

    With the cluster ``key`` (authentication on), every call carries credentials
    (``metadata``): the context holds the key, so it can act as any role and any node, and mint
    the task tickets pushes need.
    """

    def __init__(
        self,
        channels: Mapping[str, grpc.Channel],
        *,
        heartbeat_interval: float,
        key: ClusterKey | None = None,
    ) -> None:
        self.channels = dict(channels)
        self.key = key
        # Signs the "forged" credentials: right in form, wrong in key.
        self._attacker = ClusterKey.generate()
        self._tokens: dict[Role, str] = {}
        self._proofs: dict[tuple[str, str], str] = {}
        self._interval = heartbeat_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self.node_ids: list[str] = []
        self.aggregator_jobs: list[str] = []
        self.scheduler_jobs: list[str] = []
        self.model_table: list[tensor_pb2.TensorSpec] = []
        self._unary: dict[str, Any] = {}

    # Calls made by the context itself (setup, resolution, cleanup).

    def call(self, service: str, method: str, request: Message, timeout: float = 30.0) -> Any:
        """A unary call with the right credentials (raises ``grpc.RpcError``)."""
        key = f"{service}/{method}"
        if key not in self._unary:
            req_cls, resp_cls = _classes(SERVICES[service].methods_by_name[method])
            self._unary[key] = self.channels[service].unary_unary(
                _path(service, method),
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )
        metadata = self.metadata(_path(service, method), RIGHT, _node_of(request))
        return self._unary[key](request, timeout=timeout, metadata=metadata)

    # Credentials.

    def metadata(self, method: str, credential: Credential, node_id: str | None) -> Metadata | None:
        """The ``authorization`` header a case sends (None: none, or authentication off)."""
        if self.key is None or credential.kind == "none":
            return None
        return (("authorization", f"Bearer {self._token(method, credential, node_id)}"),)

    def _token(self, method: str, credential: Credential, node_id: str | None) -> str:
        assert self.key is not None
        allowed = AUTH_RULES.get(method, frozenset())
        kind = credential.kind
        if kind == "garbage":
            return credential.token
        as_node = Role.NODE in allowed and (node_id is not None or allowed == {Role.NODE})
        node = node_id if node_id is not None else (self.node_ids[0] if self.node_ids else "x")
        if kind == "wrong_role":
            role = next(r for r in (Role.JOIN, Role.SUBMITTER, Role.SERVICE) if r not in allowed)
            return self._bearer(role)
        if not as_node:
            role = next(
                (r for r in (Role.SUBMITTER, Role.SERVICE, Role.JOIN) if r in allowed),
                Role.SUBMITTER,
            )
            if kind == "forged":
                return self._attacker.mint(role, "fuzz")
            if kind == "expired":
                return self.key.mint(role, "fuzz", ttl=-60)
            return self._bearer(role)
        if kind == "forged":
            return NodeSigner(node, self._attacker.node_secret(node)).proof(method)
        if kind == "expired":
            claims = {"typ": "node", "sub": node, "iat": time.time() - 3600}
            claims |= {"jti": uuid.uuid4().hex, "mth": method}
            return jwt.encode(claims, self.key.node_secret(node), algorithm="HS256")
        if kind == "other_node":
            node = next((n for n in self.node_ids if n != node), "someone-else")
        if kind == "other_method":
            other = "/tessera.v1.Registry/Heartbeat"
            method = other if method != other else "/tessera.v1.Registry/Deregister"
        if kind == "replayed" and (method, node) in self._proofs:
            return self._proofs[method, node]
        proof = NodeSigner(node, self.key.node_secret(node)).proof(method)
        self._proofs[method, node] = proof
        return proof

    def _bearer(self, role: Role) -> str:
        assert self.key is not None
        if role not in self._tokens:
            self._tokens[role] = self.key.mint(role, "fuzz")
        return self._tokens[role]

    def ticket(self, header: Message) -> str:
        """A valid ticket for the contribution ``header`` describes ("" without a key)."""
        if self.key is None:
            return ""
        h = cast(aggregator_pb2.ContributionHeader, header)
        return self.key.mint_ticket(h.job_id, h.round, h.task_index, h.node_id)

    def start(self) -> FuzzContext:
        """Create the known nodes and jobs; start heartbeating."""
        self.node_ids = [self._register() for _ in range(2)]
        self._beater = threading.Thread(target=self._beat, name="fuzz-heartbeat", daemon=True)
        self._beater.start()
        for job_id, rule, tasks, optimizer in (
            ("fuzz-mean", "mean", 64, "adam"),
            ("fuzz-median", "median", 16, "sgd"),
        ):
            spec = common_pb2.JobSpec(
                model="mlp",
                dataset="digits",
                tasks_per_round=tasks,
                learning_rate=0.01,
                optimizer=optimizer,
                aggregation=rule,
            )
            self.call(
                "aggregator", "OpenJob", aggregator_pb2.OpenJobRequest(job_id=job_id, spec=spec)
            )
            self.aggregator_jobs.append(job_id)
        header = next(
            iter(
                self.channels["aggregator"].unary_stream(
                    _path("aggregator", "GetModel"),
                    request_serializer=aggregator_pb2.GetModelRequest.SerializeToString,
                    response_deserializer=aggregator_pb2.ModelFrame.FromString,
                )(
                    aggregator_pb2.GetModelRequest(job_id="fuzz-mean"),
                    timeout=30,
                    metadata=self.metadata(_path("aggregator", "GetModel"), RIGHT, None),
                )
            )
        )
        self.model_table = list(header.header.tensors)
        self.scheduler_jobs = [self._submit(kind) for kind in ("running", "waiting", "finished")]
        return self

    def close(self) -> None:
        """Stop heartbeating and deregister the known nodes."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=10)
        for node_id in self.node_ids:
            try:
                self.call(
                    "registry", "Deregister", registry_pb2.DeregisterRequest(node_id=node_id), 5
                )
            except grpc.RpcError:
                pass

    def _register(self) -> str:
        response = self.call(
            "registry", "Register", registry_pb2.RegisterRequest(profile=_VALID_PROFILE)
        )
        return str(response.node_id)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                nodes = list(enumerate(self.node_ids))
            for index, node_id in nodes:
                try:
                    self.call(
                        "registry", "Heartbeat", registry_pb2.HeartbeatRequest(node_id=node_id), 5
                    )
                except grpc.RpcError as exc:
                    if cast(grpc.Call, exc).code() != grpc.StatusCode.NOT_FOUND:
                        continue
                    try:
                        fresh = self._register()
                    except grpc.RpcError:
                        continue
                    with self._lock:
                        self.node_ids[index] = fresh

    def _submit(self, kind: str) -> str:
        spec = common_pb2.JobSpec(
            name=f"fuzz-{kind}",
            min_nodes=1 if kind != "waiting" else 1_000_000,
            tasks_per_round=2,
            rounds=5,
            task_timeout_seconds=3600.0,
        )
        job_id = str(
            self.call("scheduler", "SubmitJob", scheduler_pb2.SubmitJobRequest(spec=spec)).job_id
        )
        if kind == "finished":
            self.call("scheduler", "CancelJob", scheduler_pb2.CancelJobRequest(job_id=job_id))
        return job_id

    def refresh(self) -> None:
        """Replace the running and waiting scheduler jobs if a case ended them."""
        for index, kind in ((0, "running"), (1, "waiting")):
            try:
                job = self.call(
                    "scheduler",
                    "GetJob",
                    scheduler_pb2.GetJobRequest(job_id=self.scheduler_jobs[index]),
                    10,
                )
            except grpc.RpcError:
                continue
            if job.state in (
                common_pb2.JOB_STATE_SUCCEEDED,
                common_pb2.JOB_STATE_FAILED,
                common_pb2.JOB_STATE_CANCELLED,
            ):
                self.scheduler_jobs[index] = self._submit(kind)

    # Resolution of symbolic values.

    def known(self, service: str, value: Known) -> str:
        """The live id a ``Known`` stands for, from the point of view of ``service``."""
        with self._lock:
            if value.kind == "node":
                pool = list(self.node_ids)
            elif service == "aggregator":
                pool = [*self.aggregator_jobs, *self.scheduler_jobs]
            else:
                pool = list(self.scheduler_jobs)
        return pool[value.index % len(pool)] if pool else ""

    def current(self, service: str, job_id: str) -> int:
        """The open round of ``job_id`` (0 if unknown)."""
        known_jobs = {*self.aggregator_jobs, *self.scheduler_jobs}
        if job_id not in known_jobs:
            return 0
        try:
            if service == "aggregator":
                request = aggregator_pb2.OpenJobRequest(job_id=job_id)
                return int(self.call("aggregator", "OpenJob", request, 10).model_version)
            job = self.call("scheduler", "GetJob", scheduler_pb2.GetJobRequest(job_id=job_id), 10)
            return int(job.rounds_completed)
        except grpc.RpcError:
            return 0

    def table(self, spec: ModelTable) -> list[tensor_pb2.TensorSpec]:
        """The model's tensor table with ``spec.edits`` applied."""
        table = [_copy_spec(t) for t in self.model_table]
        for edit in spec.edits:
            _apply_edit(table, edit)
        return table


def _copy_spec(spec: tensor_pb2.TensorSpec) -> tensor_pb2.TensorSpec:
    out = tensor_pb2.TensorSpec()
    out.CopyFrom(spec)
    return out


def _consistent_length(spec: tensor_pb2.TensorSpec, keep: float) -> int | None:
    try:
        codec = codec_by_wire_id(int(spec.codec))
        dtype = dtype_from_name(spec.dtype)
        shape = tuple(int(d) for d in spec.shape)
        size = codec.encoded_size(dtype, shape)
        count = numel(shape)
    except Exception:  # noqa: BLE001 - an edited entry may be beyond any codec; keep its length
        return None
    if size is not None:
        return int(size)
    return 8 * min(count + 1, max(0, math.ceil(keep * count)))


def _apply_edit(table: list[tensor_pb2.TensorSpec], edit: Recode | Edit | Pad) -> None:
    if isinstance(edit, Pad):
        for i in range(edit.count):
            table.append(
                tensor_pb2.TensorSpec(
                    name=f"pad{i}" if edit.unique else "pad",
                    dtype="float32",
                    shape=[1],
                    codec=tensor_pb2.CODEC_NONE,
                    byte_length=4,
                )
            )
        return
    if not table:
        return
    index = edit.index % len(table)
    entry = table[index]
    if isinstance(edit, Recode):
        entry.codec = edit.codec  # type: ignore[assignment]
        length = _consistent_length(entry, edit.keep) if edit.length is None else edit.length
        if length is not None:
            entry.byte_length = length
    elif edit.field == "drop":
        del table[index]
    elif edit.field == "dup":
        table.append(_copy_spec(entry))
    elif edit.field == "shape":
        del entry.shape[:]
        value = edit.value.expand() if isinstance(edit.value, Many) else edit.value
        entry.shape.extend(value)
    else:
        value = edit.value.expand() if isinstance(edit.value, Many) else edit.value
        setattr(entry, edit.field, value)


# -- runners -------------------------------------------------------------------------------------


def _run_unary(
    service: str,
    method: str,
    after: Callable[[FuzzContext, Any, Any], None] | None = None,
) -> Callable[[FuzzContext, Case], Outcome]:
    req_cls, resp_cls = _classes(SERVICES[service].methods_by_name[method])

    path = _path(service, method)

    def run(context: FuzzContext, case: Case) -> Outcome:
        request = Resolver(context, service).message(req_cls, case.body)
        call = context.channels[service].unary_unary(
            path,
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        metadata = context.metadata(path, case.credential, _node_of(request))
        try:
            response = call(request, timeout=UNARY_DEADLINE, metadata=metadata)
        except grpc.RpcError as exc:
            return _outcome(exc)
        if after is not None:
            after(context, request, response)
        text = str(response).replace("\n", " ")[:120] if response.ByteSize() < 2000 else ""
        return Outcome("OK", text, responses=1)

    return run


def _run_server_stream(service: str, method: str) -> Callable[[FuzzContext, Case], Outcome]:
    req_cls, resp_cls = _classes(SERVICES[service].methods_by_name[method])

    path = _path(service, method)

    def run(context: FuzzContext, case: Case) -> Outcome:
        read: StreamRead = case.body
        request = Resolver(context, service).message(req_cls, read.request)
        call = context.channels[service].unary_stream(
            path,
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )(
            request,
            timeout=read.deadline,
            metadata=context.metadata(path, case.credential, _node_of(request)),
        )
        received = 0
        try:
            if read.read == 0:
                cast("grpc.Future[Any]", call).cancel()
                return Outcome("CANCELLED")
            for _ in call:
                received += 1
                if read.read is not None and received >= read.read:
                    cast("grpc.Future[Any]", call).cancel()
                    return Outcome("CANCELLED", responses=received)
        except grpc.RpcError as exc:
            return _outcome(exc, received)
        return Outcome("OK", responses=received)

    return run


def _receipt_outcome(receipt: aggregator_pb2.PushReceipt) -> Outcome:
    """A push's receipt as an outcome: its status, and its reason if it has one."""
    status = aggregator_pb2.ReceiptStatus.Name(receipt.status)
    return Outcome("OK", f"{status}: {receipt.reason[:200]}" if receipt.reason else status, 1)


def _run_push(context: FuzzContext, case: Case) -> Outcome:
    plan: PushPlan = case.body
    resolver = Resolver(context, "aggregator")
    frames: list[aggregator_pb2.GradientFrame | Payload | Stall] = []
    node_id: str | None = None
    for step in plan.steps:
        if isinstance(step, Frame):
            frame = resolver.message(aggregator_pb2.GradientFrame, step.recipe)
            if node_id is None and frame.WhichOneof("frame") == "header":
                node_id = frame.header.node_id
            frames.append(frame)
        else:
            frames.append(step)
    path = _path("aggregator", "PushGradient")
    metadata = context.metadata(path, case.credential, node_id)
    done = threading.Event()

    def requests() -> Iterator[aggregator_pb2.GradientFrame]:
        declared = 0
        for frame in frames:
            if isinstance(frame, Stall):
                done.wait(plan.deadline + 10)
                return
            if isinstance(frame, Payload):
                for chunk in _payload_chunks(frame, declared):
                    if done.is_set():
                        return
                    yield aggregator_pb2.GradientFrame(chunk=chunk)
                continue
            if frame.WhichOneof("frame") == "header":
                declared = sum(t.byte_length for t in frame.header.tensors)
            yield frame

    call = context.channels["aggregator"].stream_unary(
        path,
        request_serializer=aggregator_pb2.GradientFrame.SerializeToString,
        response_deserializer=aggregator_pb2.PushReceipt.FromString,
    )
    future = call.future(requests(), timeout=plan.deadline, metadata=metadata)
    future.add_done_callback(lambda _f: done.set())
    try:
        receipt = future.result()
    except grpc.RpcError as exc:
        return _outcome(exc)
    return _receipt_outcome(receipt)


def _run_small_push(context: FuzzContext, case: Case) -> Outcome:
    plan: SmallPush = case.body
    request = aggregator_pb2.SmallGradient()
    if plan.header is not None:
        request.header.CopyFrom(
            Resolver(context, "aggregator").message(aggregator_pb2.ContributionHeader, plan.header)
        )
    if isinstance(plan.payload, Payload):
        declared = sum(t.byte_length for t in request.header.tensors)
        request.payload = b"".join(_payload_chunks(plan.payload, declared))
    else:
        request.payload = plan.payload
    path = _path("aggregator", "PushSmallGradient")
    node_id = request.header.node_id if plan.header is not None else None
    metadata = context.metadata(path, case.credential, node_id)
    call = context.channels["aggregator"].unary_unary(
        path,
        request_serializer=aggregator_pb2.SmallGradient.SerializeToString,
        response_deserializer=aggregator_pb2.PushReceipt.FromString,
    )
    try:
        receipt = call(request, timeout=UNARY_DEADLINE, metadata=metadata)
    except grpc.RpcError as exc:
        return _outcome(exc)
    return _receipt_outcome(receipt)


def _run_undecodable(service: str) -> Callable[[FuzzContext, Case], Outcome]:
    methods = SERVICES[service].methods_by_name

    def run(context: FuzzContext, case: Case) -> Outcome:
        body: Undecodable = case.body
        method = methods[body.method]
        channel = context.channels[service]
        path = _path(service, body.method)
        metadata = context.metadata(path, case.credential, None)
        try:
            # No serializers: the bytes go out as they are.
            if method.client_streaming:
                future = channel.stream_unary(path, None, None).future(
                    iter([body.data]), timeout=5, metadata=metadata
                )
                future.result()
            elif method.server_streaming:
                for _ in channel.unary_stream(path, None, None)(
                    body.data, timeout=0.5, metadata=metadata
                ):
                    pass
            else:
                channel.unary_unary(path, None, None)(body.data, timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return _outcome(exc)
        return Outcome("OK")

    return run


def undecodable_cases(service: str) -> st.SearchStrategy[Undecodable]:
    """Random bytes that do not parse as the request of a method of ``service``."""
    methods = SERVICES[service].methods_by_name

    def fails(case: Undecodable) -> bool:
        request = message_factory.GetMessageClass(methods[case.method].input_type)
        return not _parses(request, case.data)

    return st.builds(
        Undecodable, st.sampled_from(sorted(methods)), st.binary(min_size=1, max_size=64)
    ).filter(fails)


# -- cleanup after successful creations ----------------------------------------------------------


def _cancel_submitted(context: FuzzContext, _request: Any, response: Any) -> None:
    # A job a case created is cancelled, so that its runner thread ends; its record stays.
    try:
        context.call(
            "scheduler", "CancelJob", scheduler_pb2.CancelJobRequest(job_id=response.job_id), 30
        )
    except grpc.RpcError:
        pass


def _close_opened(context: FuzzContext, request: Any, _response: Any) -> None:
    # A job a case opened directly on the aggregator is closed again (the scheduler's role).
    if request.job_id in {*context.aggregator_jobs, *context.scheduler_jobs}:
        return
    try:
        context.call(
            "aggregator", "CloseJob", aggregator_pb2.CloseJobRequest(job_id=request.job_id), 30
        )
    except grpc.RpcError:
        pass


def _protected_close(
    run: Callable[[FuzzContext, Case], Outcome],
) -> Callable[[FuzzContext, Case], Outcome]:
    # CloseJob of the known jobs would only turn every later case into NOT_FOUND.
    def guarded(context: FuzzContext, case: Case) -> Outcome:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("job_id"), Known):
            case = Case({**body, "job_id": "no-such-job"}, case.credential)
        return run(context, case)

    return guarded


# -- near-valid requests -------------------------------------------------------------------------


def near_valid_specs(limits: Limits) -> st.SearchStrategy[dict[str, Any]]:
    """Valid job specs with a few fields replaced by generated values."""
    valid = st.fixed_dictionaries(
        {
            "model": st.just("mlp"),
            "dataset": st.just("digits"),
            "tasks_per_round": st.integers(1, 4),
            "rounds": st.integers(1, 5),
            "learning_rate": st.floats(1e-4, 1.0),
            "hidden_sizes": st.lists(st.integers(1, 64), max_size=2),
        }
    )
    generic = message_recipes(common_pb2.JobSpec.DESCRIPTOR, limits=limits)
    return st.tuples(valid, generic).map(lambda p: {**p[0], **p[1]})


def near_valid_profiles(limits: Limits) -> st.SearchStrategy[dict[str, Any]]:
    """Valid node profiles with a few fields replaced by generated values."""
    valid = st.fixed_dictionaries(
        {
            "cpu_cores": st.integers(1, 64),
            "throughput": st.floats(1.0, 1e6),
            "bandwidth": st.floats(0.0, 1e10),
        }
    )
    generic = message_recipes(common_pb2.NodeProfile.DESCRIPTOR, limits=limits)
    return st.tuples(valid, generic).map(lambda p: {**p[0], **p[1]})


def stream_reads(
    request: st.SearchStrategy[Any],
) -> st.SearchStrategy[StreamRead]:
    """A request, a short deadline and how many messages to read before cutting the stream."""
    return st.builds(
        StreamRead,
        request,
        st.sampled_from([0.01, 0.05, 0.2, 0.5]),
        st.one_of(st.none(), st.integers(0, 3)),
    )


def _live_request(desc: pb_descriptor.Descriptor) -> st.SearchStrategy[dict[str, Any]]:
    """A request naming live things only: known ids, the current version."""
    live: dict[str, st.SearchStrategy[Any]] = {
        "node_id": known("node"),
        "job_id": known("job"),
        "version": st.sampled_from([Current(), 0]),
    }
    return st.fixed_dictionaries({name: live[name] for name in _fields(desc) if name in live})


def _cases(body: st.SearchStrategy[Any]) -> st.SearchStrategy[Case]:
    # Deferred for a short repr: hypothesis prints a strategy's repr on failure, and these run
    # to hundreds of kilobytes.
    return st.deferred(lambda: st.builds(Case, body, credentials()))


def targets(limits: Limits = Limits()) -> dict[str, Target]:  # noqa: B008 - frozen dataclass
    """Every RPC of the three services, plus one ``undecodable`` target per service."""
    out: dict[str, Target] = {}
    special: dict[str, st.SearchStrategy[Any]] = {
        "Registry/Register": st.one_of(
            request_recipes(registry_pb2.RegisterRequest, limits),
            near_valid_profiles(limits).map(lambda p: {"profile": p}),
        ),
        "Scheduler/SubmitJob": st.one_of(
            request_recipes(scheduler_pb2.SubmitJobRequest, limits),
            near_valid_specs(limits).map(lambda s: {"spec": s}),
        ),
        "Aggregator/OpenJob": st.one_of(
            request_recipes(aggregator_pb2.OpenJobRequest, limits),
            st.fixed_dictionaries({"job_id": texts(limits), "spec": near_valid_specs(limits)}),
        ),
        "Scheduler/ReportTask": st.one_of(
            request_recipes(scheduler_pb2.ReportTaskRequest, limits),
            st.fixed_dictionaries(
                {
                    "node_id": known("node"),
                    "job_id": known("job"),
                    "round": mostly(st.just(Current()), integers(*_UINT32)),
                    "task_index": mostly(st.integers(0, 2), integers(*_UINT32)),
                    "outcome": st.sampled_from([0, 1, 1, 2, 3]),
                    "compute_seconds": doubles(),
                    "samples": integers(*_UINT64),
                }
            ),
        ),
        "Aggregator/CloseRound": st.one_of(
            request_recipes(aggregator_pb2.CloseRoundRequest, limits),
            st.fixed_dictionaries(
                {
                    "job_id": known("job"),
                    "round": mostly(st.just(Current()), integers(*_UINT32)),
                    "num_tasks": mostly(st.integers(0, 8), integers(*_UINT32)),
                }
            ),
        ),
    }
    after = {
        "Scheduler/SubmitJob": _cancel_submitted,
        "Aggregator/OpenJob": _close_opened,
    }
    for service, desc in SERVICES.items():
        for method in desc.methods:
            name = f"{desc.name}/{method.name}"
            req_cls, _ = _classes(method)
            if method.client_streaming:
                out[name] = Target(name, service, _cases(push_plans(limits)), _run_push)
                continue
            if name == "Aggregator/PushSmallGradient":
                out[name] = Target(name, service, _cases(small_pushes(limits)), _run_small_push)
                continue
            request = special.get(name, request_recipes(req_cls, limits))
            if method.server_streaming:
                # Streams of live ids run until cut; random ids end at the first check.
                request = mostly(request, _live_request(method.input_type), times=1)
                out[name] = Target(
                    name,
                    service,
                    _cases(stream_reads(request)),
                    _run_server_stream(service, method.name),
                )
                continue
            run = _run_unary(service, method.name, after.get(name))
            if name == "Aggregator/CloseJob":
                run = _protected_close(run)
            out[name] = Target(name, service, _cases(request), run)
        name = f"{desc.name}/undecodable"
        out[name] = Target(
            name, service, _cases(undecodable_cases(service)), _run_undecodable(service)
        )
    return out


def health_status(channel: grpc.Channel, timeout: float = 5.0) -> str:
    """The standard health check's answer for the whole server ("SERVING", or a status code)."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.RpcError as exc:
        return cast(grpc.Call, exc).code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def describe(case: Any) -> str:
    """A short, reproducible description of a case (long values stay ``Many``)."""
    text = repr(case)
    return text if len(text) <= 2000 else text[:2000] + "..."
