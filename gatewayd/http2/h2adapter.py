"""Every use of h2 beyond its documented API, in one module.

h2 is a careful, complete state machine; on a busy gateway a few of its general
paths cost more than the rest of a call, and a few of its choices do not fit a
server that must keep streams alive through abuse and shutdown. Each departure
lives here, with the reason, and tests/unit/test_h2_adapter.py and
test_h2_data_frames.py pin what it writes and leaves behind to what h2 itself does,
so an h2 upgrade that changes an internal fails a test instead of a connection.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState, _decode_headers
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.exceptions import StreamClosedError, StreamIDTooLowError, TooManyStreamsError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, StreamClosedBy, StreamInputs, StreamState
from h2.utilities import SizeLimitDict
from hpack.hpack import Decoder, encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from hyperframe.frame import ContinuationFrame, GoAwayFrame, RstStreamFrame, WindowUpdateFrame

from gatewayd.http2.limits import H2Limits
from gatewayd.transport.exchange import HeaderList

MAX_STREAM_ID = 2**31 - 1
# h2 forgets closed streams only while it counts open ones; we count when ``streams`` has
# doubled since the last count, and not below this many.
_RECOUNT_FLOOR = 128


class _CountingTable(HeaderTable):
    """hpack's header table, counting every change (an entry added, the size set)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


_MAX_REMEMBERED_BLOCKS = 16
_MAX_REMEMBERED_BLOCK_BYTES = 1024


class RememberingDecoder(Decoder):
    """hpack's Decoder, which answers a header block it has decoded before without decoding
    it again, when neither that block nor anything since has changed the dynamic table.

    Clients send the same block for every call of one method once their fields are
    indexed (and nghttp2 sends ``:path`` as a Huffman-coded literal that is never
    indexed, decoded byte by byte in Python each time). A block's headers depend only
    on its bytes, the dynamic table and the limits, so while the table's change count
    and the limits are what they were, the same bytes mean the same headers. A block
    that changes the table (an indexed literal, a size update) is never remembered.
    tests/unit/test_h2_header_decoding.py pins results, errors and table state to hpack's.

    After each decode, ``plain`` says whether the block (raw bytes, as h2 hands them over)
    has none of the fields h2's request path treats apart (``_PLAIN_EXCEPT``), and
    ``content_length`` whether it has a ``content-length`` field: ``ServerH2Connection``
    opens a stream of a plain block on its lean path. Both are remembered with the block.
    """

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self._table = _CountingTable()
        self._remembered: dict[bytes, tuple[tuple[Any, ...], bool, bool]] = {}
        self._remembered_state: tuple[int, int, int] = (-1, -1, -1)
        self.plain = False
        self.content_length = False

    def decode(self, data: bytes, raw: bool = False) -> Any:
        self.plain = self.content_length = False
        if not raw or type(data) is not bytes:  # h2 asks for raw bytes, and hands over bytes
            return super().decode(data, raw)
        table = self._table
        state = (table.generation, self.max_header_list_size, self.max_allowed_table_size)
        remembered = self._remembered
        if state != self._remembered_state:
            remembered.clear()
            self._remembered_state = state
        else:
            known = remembered.get(data)
            if known is not None:
                headers, self.plain, self.content_length = known
                return list(headers)
        decoded = super().decode(data, raw)
        plain = not any(field[0] in _PLAIN_EXCEPT for field in decoded)
        content_length = any(field[0] == b"content-length" for field in decoded)
        if (table.generation == state[0] and len(data) <= _MAX_REMEMBERED_BLOCK_BYTES
                and len(remembered) < _MAX_REMEMBERED_BLOCKS):
            remembered[data] = (tuple(decoded), plain, content_length)
        self.plain, self.content_length = plain, content_length
        return decoded


# The fields of a request block that h2's receive path changes or reads for other than the
# stream's content length: ``:status`` (an informational response,
# h2.utilities.is_informational_response) and ``cookie`` (crumbs joined by
# normalize_inbound_headers). (A ``content-length`` is read by h2's own
# H2Stream._initialize_content_length on the lean path too.)
_PLAIN_EXCEPT = frozenset((b":status", b"cookie"))


_FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length + 8-bit type, flags, reserved bit + stream id
# Read once: on Python 3.11 an enum member read from its class costs more than the rest of a check.
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_CLOSED_BY_SEND_END_STREAM = StreamClosedBy.SEND_END_STREAM
_FLAG_NAMES = {0x1: frozenset(("END_STREAM",)), 0x4: frozenset(("END_HEADERS",)),
               0x5: frozenset(("END_STREAM", "END_HEADERS"))}
_NO_FLAGS: frozenset[str] = frozenset()


class _ReceivedData:
    """A DATA frame without padding, as h2's DATA handler reads it (hyperframe's DataFrame has
    the same attributes)."""

    __slots__ = ("data", "flags", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, flags: frozenset[str], data: bytes) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.data = data
        self.flow_controlled_length = len(data)


class _ReceivedHeaders:
    """A HEADERS frame with END_HEADERS and without padding or priority, as h2's HEADERS
    handler reads it."""

    __slots__ = ("data", "flags", "stream_id")

    def __init__(self, stream_id: int, flags: frozenset[str], data: bytes) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.data = data


class ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, where a new stream costs O(1) instead of O(streams held), frames
    received are not formatted for a log nobody reads, the frames of a plain request
    (HEADERS, DATA) are not built through hyperframe, and repeated request header blocks
    are not decoded again (``RememberingDecoder``).

    On every new stream h2 reads ``open_inbound_streams``, which walks all its
    streams (forgetting the closed ones as it goes), only to compare the count
    with our local MAX_CONCURRENT_STREAMS: with thousands of open streams on one
    connection, opening each costs thousands of steps. For that one read we
    answer ``len(streams)``, an upper bound on the open ones, whenever it is below
    the limit (so the comparison comes out as the exact count would), and walk
    only when ``streams`` has doubled since the last walk (amortised O(1), and
    closed streams are still forgotten, in batches). Both states of a closed
    stream (still in ``streams``, or forgotten into ``_closed_streams``) are ones
    stock h2 reaches too, as it forgets only when the next stream opens. Every
    other read of ``open_inbound_streams`` is h2's exact count;
    tests/unit/test_h2_adapter.py pins frames, events and errors to stock h2's.
    """

    # How a forgotten stream was closed decides only how h2 answers a late frame on it (ignored
    # after a reset, else RST_STREAM STREAM_CLOSED). h2 remembers 65,536 per connection (~7 MB on a
    # busy long-lived connection: the largest steady growth in the 30-minute soak,
    # docs/reliability.md); a few thousand covers any late frame in flight.
    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        decoder = RememberingDecoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        self.decoder = decoder
        self._counting_new_stream = False
        self._recount_at = _RECOUNT_FLOOR
        handlers: dict[Any, Any] = self._frame_dispatch_table
        handlers[_ReceivedData] = self._receive_data_frame
        handlers[_ReceivedHeaders] = self._receive_headers_frame
        # The lean request path hands h2's decoded list over as the event's headers: only
        # while h2 would pass it on unchanged (cookie crumbs aside, see _PLAIN_EXCEPT).
        self._lean_requests = not config.client_side and not config.validate_inbound_headers \
            and not config.header_encoding

    def receive_data(self, data: Any) -> Any:
        """h2's receive_data, with the frames that carry a plain request parsed here.

        For every frame h2's FrameBuffer parses a header into a hyperframe object (flags as
        a set of names, padding and priority fields), checks it and copies its body: a
        fifth of a unary call. A DATA frame without padding and a HEADERS frame that ends
        its block without padding or priority are read here instead, into objects with
        the attributes h2's own handlers read, and go through ``_receive_frame`` and
        those handlers like any frame; errors are answered as h2's receive_data answers
        them. Every other frame, one that is too large, a frame in the middle of a header
        block and the preface go to h2's receive_data, frame by frame in order; a frame
        not yet complete waits in h2's buffer. tests/unit/test_h2_adapter.py pins events,
        bytes written and errors to stock h2's for random sessions cut at random points.
        """
        buffer = self.incoming_buffer
        if buffer._preamble_len or buffer._headers_buffer or type(data) is not bytes:
            return super().receive_data(data)
        pending = buffer._data
        if pending:
            data = bytes(pending) + data
            del pending[:]
        events: list[Any] = []
        offset, size = 0, len(data)
        while size - offset >= 9:
            length_type, flags, stream_id = _FRAME_HEADER.unpack_from(data, offset)
            length = length_type >> 8
            end = offset + 9 + length
            if end > size:
                break
            kind = length_type & 0xFF
            stream_id &= 0x7FFFFFFF
            frame: _ReceivedData | _ReceivedHeaders | None = None
            if stream_id and length <= self.max_inbound_frame_size:
                if kind == 0x0 and flags <= 0x1:
                    frame = _ReceivedData(stream_id, _FLAG_NAMES.get(flags, _NO_FLAGS), data[offset + 9:end])
                elif kind == 0x1 and flags in (0x4, 0x5):
                    frame = _ReceivedHeaders(stream_id, _FLAG_NAMES[flags], data[offset + 9:end])
            if frame is None:
                events += super().receive_data(data[offset:end])
                offset = end
                if buffer._headers_buffer:
                    break  # CONTINUATION frames follow: h2's buffer joins them
                continue
            try:
                events += self._receive_frame(frame)
            except h2.exceptions.ProtocolError as e:
                self._terminate_connection(e.error_code)
                raise
            offset = end
        if offset < size:
            events += super().receive_data(data[offset:])
        return events

    def _receive_frame(self, frame: Any) -> Any:
        # h2's own _receive_frame without its first statement, which formats every frame
        # received with repr() for a trace log that h2's default logger drops (~5% of a
        # unary call). tests/unit/test_h2_adapter.py pins the rest to h2's code.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)

        return events

    def _receive_headers_frame(self, frame: Any) -> Any:
        sid = frame.stream_id
        if (type(frame) is _ReceivedHeaders and sid & 1 and sid > self.highest_inbound_stream_id
                and self.state_machine.state is _SERVER_OPEN and self._lean_requests and sid not in self.streams):
            return self._receive_request_headers(frame)
        self._counting_new_stream = True
        try:
            return super()._receive_headers_frame(frame)
        finally:
            self._counting_new_stream = False

    def _receive_request_headers(self, frame: _ReceivedHeaders) -> Any:
        """h2's ``_receive_headers_frame`` for the HEADERS frame that opens a client stream.

        The frame is a whole block (END_HEADERS, no padding or priority) on a new odd stream
        above every stream the client opened, with the connection open: h2 would check the
        open-stream limit, decode the block, make the connection's RECV_HEADERS input (no
        transition in SERVER_OPEN), create the stream (its id checks pass) and have it
        receive the headers: IDLE to OPEN (``request_received``), and with END_STREAM to
        HALF_CLOSED_REMOTE (``stream_half_closed``), then read a content-length. Here the
        same steps run in that order without h2's general machinery (the state machine's
        table, the per-field generators); a block with a field h2 treats apart
        (``_PLAIN_EXCEPT``) is received by h2's own ``H2Stream.receive_headers``. tests/unit/test_h2_adapter.py pins the
        transitions to h2's table and events, state, bytes and errors to stock h2's.
        """
        sid = frame.stream_id
        max_open = self.local_settings.max_concurrent_streams
        value = self._open_inbound_for_new_stream(max_open)
        if value + 1 > max_open:
            msg = f"Max inbound streams is {max_open}, {value} open"
            raise TooManyStreamsError(msg)
        decoder = self.decoder
        headers = _decode_headers(decoder, frame.data)
        stream = H2Stream(sid, config=self.config, inbound_window_size=self.local_settings.initial_window_size,
                          outbound_window_size=self.remote_settings.initial_window_size)
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[sid] = stream
        self.highest_inbound_stream_id = sid
        end_stream = "END_STREAM" in frame.flags
        if not getattr(decoder, "plain", False):
            return stream.receive_headers(headers, end_stream, self.config.header_encoding)
        machine = stream.state_machine
        machine.state = _OPEN
        machine.client = False
        machine.headers_received = True
        event = RequestReceived(stream_id=sid)
        events: list[Any] = [event]
        if end_stream:
            _ended_by_peer(machine, event, events)
        if getattr(decoder, "content_length", True):
            stream._initialize_content_length(headers)  # (h2's: may raise ProtocolError)
        event.headers = headers  # type: ignore[assignment]  # (the decoder's new list, as h2's list(...) of it)
        return [], events

    def _receive_data_frame(self, frame: Any) -> Any:
        """h2's ``_receive_data_frame`` for DATA on an open stream of an open connection.

        h2 would make the connection's RECV_DATA input (no transition in SERVER_OPEN),
        consume both receive windows (each may raise FlowControlError), make the stream's
        RECV_DATA input (OPEN stays OPEN: ``data_received``), count the body against a
        content-length (h2's ``_track_content_length`` when there is one) and with END_STREAM
        go to HALF_CLOSED_REMOTE (``stream_half_closed``). Anything else is h2's own path.
        """
        stream: Any = self.streams.get(frame.stream_id)
        machine = stream.state_machine if stream is not None else None
        if (type(frame) is not _ReceivedData or machine is None or machine.state is not _OPEN
                or not machine.headers_received or self.state_machine.state is not _SERVER_OPEN):
            return super()._receive_data_frame(frame)
        sid = frame.stream_id
        length = frame.flow_controlled_length
        end_stream = "END_STREAM" in frame.flags
        self._inbound_flow_control_window_manager.window_consumed(length)
        event = DataReceived(stream_id=sid)
        stream._inbound_window_manager.window_consumed(length)
        if stream._expected_content_length is None:
            stream._actual_content_length += length
        else:
            stream._track_content_length(length, end_stream)  # (h2's: may raise InvalidBodyLengthError)
        events: list[Any] = [event]
        if end_stream:
            _ended_by_peer(machine, event, events)
        event.data = frame.data
        event.flow_controlled_length = length
        return [], events

    def _open_inbound_for_new_stream(self, max_open: int) -> int:
        """What h2 reads of ``open_inbound_streams`` before opening a stream, with ``max_open``
        its local MAX_CONCURRENT_STREAMS (see the class)."""
        streams = self.streams
        if len(streams) >= self._recount_at:
            _ = super().open_inbound_streams  # walks, forgetting closed streams
            self._recount_at = max(_RECOUNT_FLOOR, 2 * len(streams))
        if len(streams) < max_open:
            return len(streams)
        return super().open_inbound_streams

    @property
    def open_inbound_streams(self) -> int:
        if self._counting_new_stream:
            self._counting_new_stream = False
            return self._open_inbound_for_new_stream(self.local_settings.max_concurrent_streams)
        return super().open_inbound_streams


def max_header_block_bytes(max_header_list_bytes: int) -> int:
    """The most raw (HPACK-encoded) bytes one request header block may have.

    Above every block the decoder would accept. The header list limit counts each field as
    name + value + 32 bytes (RFC 7541 4.1). Encoded, a string takes at most 30/8 of its length
    (HPACK's longest Huffman code, 30 bits, for one octet: a client may Huffman-code even when that
    is longer), plus its length prefix and a padding byte; a field's representation and prefixes
    stay well under 30/8 x 32 = 120 bytes. So an acceptable block is at most 30/8 of the limit;
    4x leaves room for the dynamic table size updates that may open a block.
    """
    return 4 * max_header_list_bytes


class HeaderBlockTooLarge(h2.exceptions.DenialOfServiceError):
    """A header block passed ``max_header_block_bytes`` (GOAWAY ENHANCE_YOUR_CALM, like h2's other
    DenialOfServiceErrors)."""


class BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer for a server, refusing a header block as soon as its raw bytes pass
    ``max_block_bytes``.

    h2 collects a block's HEADERS and CONTINUATION frames until END_HEADERS and only then
    decodes it, checking the header list limit: a peer that sends CONTINUATION frames without
    end is refused only at h2's 65th frame, 1 MiB at the default frame size, per connection.
    Here the frame that takes the block past the bound raises ``HeaderBlockTooLarge``, which
    h2's ``receive_data`` answers as it does any ProtocolError (GOAWAY with its code, then
    raise). Frames and errors are otherwise h2's own: tests/unit/test_h2_adapter.py.
    """

    def __init__(self, max_block_bytes: int) -> None:
        super().__init__(server=True)
        self.max_block_bytes = max_block_bytes

    def _update_header_buffer(self, f: Any) -> Any:
        frame: Any = FrameBuffer._update_header_buffer(self, f)  # (not super(): this runs for every frame)
        if type(f) is ContinuationFrame and frame is not f:
            # f continued a block: still waiting for END_HEADERS (h2 keeps at most 64 frames), or
            # ended and joined in ``frame``. (A CONTINUATION out of nowhere is h2's error to raise.)
            pending = self._headers_buffer
            size = sum(len(p.data) for p in pending) if pending else len(frame.data)
            if size > self.max_block_bytes:
                msg = f"header block on stream {f.stream_id} over {self.max_block_bytes} bytes (CONTINUATION flood)"
                raise HeaderBlockTooLarge(msg)
        return frame


def server_config() -> h2.config.H2Configuration:
    """The h2 configuration of every server connection."""
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # We build response headers ourselves (lowercase, no connection headers);
        # re-validating them costs more than the rest of a unary call.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        # Inbound headers are checked in one pass by request_headers.parse_request_headers,
        # which we walk anyway; h2's own checks walk the list several times per request.
        validate_inbound_headers=False,
    )


def server_connection(limits: H2Limits) -> ServerH2Connection:
    """An h2 server connection with our preface and settings queued (``data_to_send``)."""
    conn = ServerH2Connection(server_config())
    conn.initiate_connection()
    conn.update_settings(
        {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
        }
    )
    # Enforce our header limit from the first frame, not only once the peer ACKs.
    conn.decoder.max_header_list_size = limits.max_header_list_bytes
    conn.incoming_buffer = BoundedFrameBuffer(max_header_block_bytes(limits.max_header_list_bytes))
    conn.local_settings.acknowledge()
    # h2 treats a stream over the advertised MAX_CONCURRENT_STREAMS as a connection error,
    # which kills every stream of a client that raced our SETTINGS. RFC 9113 5.1.2 allows
    # a stream error: the core refuses such a stream (REFUSED_STREAM) itself, and resets
    # streams it has answered, so h2 holds no more open streams than that.
    # (Set locally and applied at once: nothing is sent, the peer still sees our limit.)
    conn.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
    conn.local_settings.acknowledge()
    # A connection-level receive window as large as the per-stream one.
    conn.increment_flow_control_window(limits.initial_window_size)
    return conn


# --- HEADERS frames without HPACK state ---------------------------------------------------
#
# h2 encodes every header block with its HPACK encoder (each field searched in the tables,
# Huffman-coded, added to the dynamic table) and builds frame objects to serialize them:
# most of what a unary response costs on the wire. A field sent as a static-table index or
# as a literal *without indexing* (RFC 7541 6.1, 6.2.2) changes neither side's dynamic
# table, so its bytes are the same on every stream of every connection: computed once,
# they are written directly, while h2's stream state machine still makes exactly the
# transitions its own send_headers makes. h2's encoder never sees these blocks, and the
# ones it does encode (the rare cases below) stay decodable: our blocks touch no table.

_HEADERS_FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length + type 1 (HEADERS), flags, stream id
_END_STREAM = 0x1
_END_HEADERS = 0x4
_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, _field in enumerate(HeaderTable.STATIC_TABLE, 1):  # the lowest index of a name wins
    _STATIC_FIELD.setdefault(_field, _index)
    _STATIC_NAME.setdefault(_field[0], _index)
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
# Encoded fields by (name, value): the fixed ones (":status: 200", "content-type:
# application/grpc", "grpc-status: 0"...) are met on every call. Bounded, as values such as
# error messages vary; fields past the bound are encoded each time.
_FIELDS: dict[tuple[bytes, bytes], bytes] = {}
_MAX_FIELDS = 1024
_MAX_CACHED_FIELD_BYTES = 256


def _hpack_integer(value: int, prefix_bits: int, pattern: int) -> bytes:
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= pattern
    return bytes(encoded)


def _hpack_string(data: bytes) -> bytes:
    """A string literal, Huffman-coded when that is shorter (RFC 7541 5.2)."""
    coded = _HUFFMAN.encode(data)
    if len(coded) < len(data):
        return _hpack_integer(len(coded), 7, 0x80) + coded
    return _hpack_integer(len(data), 7, 0x00) + data


def stateless_field(name: bytes, value: bytes) -> bytes:
    """One header field that leaves both dynamic tables alone: the static table's index for
    the whole field, else a literal without indexing (naming the field by its static index
    when the table has the name)."""
    index = _STATIC_FIELD.get((name, value))
    if index is not None:
        return _hpack_integer(index, 7, 0x80)
    index = _STATIC_NAME.get(name)
    if index is not None:
        return _hpack_integer(index, 4, 0x00) + _hpack_string(value)
    return b"\x00" + _hpack_string(name) + _hpack_string(value)


def stateless_block(headers: HeaderList) -> bytes | None:
    """The header block of ``headers`` in fields that use no dynamic table; ``None`` when a
    field is not a plain ``(bytes, bytes)`` pair (h2's HeaderTuple types carry indexing
    choices of their own: h2 encodes those)."""
    fields = _FIELDS
    parts = []
    for pair in headers:
        if type(pair) is not tuple:
            return None
        field = fields.get(pair)
        if field is None:
            name, value = pair
            if type(name) is not bytes or type(value) is not bytes:
                return None
            field = stateless_field(name, value)
            if len(fields) < _MAX_FIELDS and len(name) + len(value) <= _MAX_CACHED_FIELD_BYTES:
                fields[pair] = field
        parts.append(field)
    return b"".join(parts)


def sent_headers(machine: Any) -> None:
    """``machine.process_input(StreamInputs.SEND_HEADERS)`` on a server stream in OPEN or
    HALF_CLOSED_REMOTE, where h2's table keeps the state and runs ``response_sent``: the
    response headers, or else the trailers, marked sent. (A lookup of an (enum, enum) key
    and the call cost more than the transition.) Anything else is h2's own process_input,
    with its errors; tests/unit/test_h2_header_blocks.py pins this to h2's table and code."""
    state = machine.state
    if machine.client is False and not machine.trailers_sent and (state is _HALF_CLOSED_REMOTE or state is _OPEN):
        if machine.headers_sent:
            machine.trailers_sent = True
        else:
            machine.headers_sent = True
        return
    machine.process_input(StreamInputs.SEND_HEADERS)


def sent_end_stream(machine: Any) -> None:
    """``machine.process_input(StreamInputs.SEND_END_STREAM)``: OPEN goes to HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE to CLOSED (``send_end_stream``: closed by SEND_END_STREAM), as h2's
    table says (pinned in tests/unit/test_h2_header_blocks.py); any other state is h2's."""
    state = machine.state
    if state is _HALF_CLOSED_REMOTE:
        machine.state = _CLOSED
        machine.stream_closed_by = _CLOSED_BY_SEND_END_STREAM
    elif state is _OPEN:
        machine.state = _HALF_CLOSED_LOCAL
    else:
        machine.process_input(StreamInputs.SEND_END_STREAM)


def send_headers(conn: h2.connection.H2Connection, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
    """Every HEADERS frame the server writes (responses and trailers) goes through here.

    A response or trailers block on a stream h2 lets us answer is written as one HEADERS
    frame of stateless fields, after the stream state transitions h2's send_headers makes
    (``SEND_HEADERS``, then ``SEND_END_STREAM`` with ``end_stream``). Anything else takes
    h2's own path, with its encoder and its errors: an unknown or closed stream, a
    connection that is not open, a dynamic table size update h2 owes the peer (it goes
    first in the next block h2 encodes), an informational (1xx) response, a block over one
    frame. tests/unit/test_h2_header_blocks.py pins the
    decoded headers, frames and state to h2's.
    """
    stream = conn.streams.get(stream_id)
    if (
        stream is not None
        and conn.state_machine.state is _SERVER_OPEN
        and not conn.encoder.header_table.resized
        and headers
    ):
        machine = stream.state_machine
        first = headers[0]
        state = machine.state
        if (state is _HALF_CLOSED_REMOTE or state is _OPEN) and not (first[0] == b":status" and first[1][:1] == b"1"):
            block = stateless_block(headers)
            if block is not None and len(block) <= conn.max_outbound_frame_size:
                sent_headers(machine)
                if machine.trailers_sent and not end_stream:
                    # h2's error, in h2's state, but raised before any encoding: h2 raises it
                    # after its encoder has indexed fields the peer never receives.
                    raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
                flags = _END_HEADERS
                if end_stream:
                    sent_end_stream(machine)
                    flags |= _END_STREAM
                buffer = conn._data_to_send
                buffer += _HEADERS_FRAME_HEADER.pack(len(block) << 8 | 0x1, flags, stream_id)
                buffer += block
                return
    conn.send_headers(stream_id, headers, end_stream)


def send_window(conn: h2.connection.H2Connection, stream_id: int) -> tuple[Any, int] | None:
    """h2's stream and how many DATA bytes both windows allow now; ``None``: h2 forgot the stream."""
    stream = conn.streams.get(stream_id)
    if stream is None:
        return None
    return stream, min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)


def still_open(conn: h2.connection.H2Connection, stream_id: int) -> bool:
    """Whether h2 still counts the stream as not closed (the peer may still send on it)."""
    stream = conn.streams.get(stream_id)
    return stream is not None and stream.state_machine.state is not _CLOSED


def acknowledge_received(conn: h2.connection.H2Connection, size: int, stream_id: int, stream_ended: bool) -> None:
    """``conn.acknowledge_received_data(size, stream_id)``, but for the DATA frame that ended the
    peer's side of the stream only the connection's window is handed back: the peer may send
    no more on the stream, so h2's stream WINDOW_UPDATE (when it would send one) opens a window
    nobody uses, and its bookkeeping costs a third of a small request body's handling. The
    connection's WINDOW_UPDATE is h2's (tests/unit/test_h2_data_frames.py)."""
    if not stream_ended:
        conn.acknowledge_received_data(size, stream_id)
        return
    increment = conn._inbound_flow_control_window_manager.process_bytes(size)
    if increment:
        frame = WindowUpdateFrame(0)
        frame.window_increment = increment
        conn._prepare_for_sending([frame])


def forget_if_closed(conn: h2.connection.H2Connection, stream_id: int) -> bool:
    """Whether h2 still holds the stream not closed; a closed one is forgotten now.

    h2 forgets a closed stream (moves it from ``streams`` to ``_closed_streams``, with how it
    was closed) only while it walks ``streams`` counting open ones: stock h2 on every new
    stream, ``ServerH2Connection`` when ``streams`` has doubled. Done here as the stream
    ends, the walks find only open streams and a late frame on the stream meets the state
    stock h2 has once the next stream opens (tests/unit/test_h2_adapter.py sends them).
    """
    streams = conn.streams
    stream = streams.get(stream_id)
    if stream is None:
        return False
    machine = stream.state_machine
    if machine.state is not _CLOSED:
        return True
    del streams[stream_id]
    closed = conn._closed_streams
    if type(closed) is SizeLimitDict:
        # SizeLimitDict.__setitem__ without its two Python calls: the OrderedDict's own, then
        # its oldest entries dropped past the limit (tests/unit/test_h2_core.py pins the result).
        _set_ordered(closed, stream_id, machine.stream_closed_by)
        limit = closed._size_limit
        while limit is not None and len(closed) > limit:
            closed.popitem(last=False)
    else:
        closed[stream_id] = machine.stream_closed_by
    return False


_set_ordered = OrderedDict.__setitem__


def goaway_frame(last_stream_id: int) -> bytes:
    """A GOAWAY(NO_ERROR) frame, written around h2.

    h2's close_connection() moves its state machine to CLOSED, after which open
    streams could not finish; a graceful drain's two GOAWAYs are written by hand.
    """
    frame = GoAwayFrame(stream_id=0)
    frame.last_stream_id = last_stream_id
    frame.error_code = h2.errors.ErrorCodes.NO_ERROR
    return bytes(frame.serialize())


_DATA_FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length + type 0 (DATA), flags, stream id
# The stream states that send DATA are OPEN and HALF_CLOSED_REMOTE, compared by identity
# (``state in frozenset`` hashes the enum member, and Enum.__hash__ is Python code).
# The smallest SETTINGS_MAX_FRAME_SIZE a peer may set (RFC 9113 6.5.2): a frame this size fits any peer.
ANY_PEER_FRAME_SIZE = 16384


def send_data_now(conn: h2.connection.H2Connection, stream: Any, data: bytes) -> bool:
    """One DATA frame of ``data`` (without END_STREAM) on h2's ``stream`` if it can go out now;
    whether it went.

    It goes when h2 would send it as one frame without a transition or an error: the
    stream and the connection open for sending, both windows large enough, and ``data``
    no larger than any peer's maximum frame size (so the peer's setting need not be
    read). Otherwise nothing changes and the caller queues ``data``. ``stream`` may be
    held from the stream's start (``h2_stream``): h2 forgets only closed streams, which
    this refuses. The bytes and the windows are h2's send_data's
    (tests/unit/test_h2_data_frames.py).
    """
    size = len(data)
    if (
        stream is None
        or size > ANY_PEER_FRAME_SIZE
        or size > stream.outbound_flow_control_window
        or size > conn.outbound_flow_control_window
        or conn.state_machine.state is not _SERVER_OPEN
    ):
        return False
    state = stream.state_machine.state
    if state is not _HALF_CLOSED_REMOTE and state is not _OPEN:
        return False
    buffer = conn._data_to_send
    buffer += _DATA_FRAME_HEADER.pack(size << 8, 0, stream.stream_id)
    buffer += data
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    return True


def h2_stream(conn: h2.connection.H2Connection, stream_id: int) -> Any:
    """h2's object for the stream (``None`` if h2 has forgotten it): the same until h2 forgets it."""
    return conn.streams.get(stream_id)


def send_data_frame(conn: h2.connection.H2Connection, stream: Any, data: bytes, end_stream: bool = False) -> None:
    """``conn.send_data(stream_id, data, end_stream)``, for the fan-out and unary hot paths.

    The caller has checked ``data`` against the flow-control windows and the
    frame size. In the states where sending DATA is allowed, h2's state
    machines make no transition for it and its send_data only serializes one
    frame and lowers both windows (and with ``end_stream``, makes the stream's
    ``SEND_END_STREAM`` transition): done here directly, it is about a third of
    the cost per frame. Anything unusual takes h2's own path;
    tests/unit/test_h2_data_frames.py pins the bytes, windows and state to h2's.
    """
    state = stream.state_machine.state
    if (state is not _HALF_CLOSED_REMOTE and state is not _OPEN) or conn.state_machine.state is not _SERVER_OPEN:
        conn.send_data(stream.stream_id, data, end_stream=end_stream)
        return
    flags = 0
    if end_stream:
        sent_end_stream(stream.state_machine)
        flags = _END_STREAM
    size = len(data)
    buffer = conn._data_to_send
    buffer += _DATA_FRAME_HEADER.pack(size << 8, flags, stream.stream_id)
    buffer += data
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size


def send_same_data(conn: h2.connection.H2Connection, streams: list[Any], data: bytes) -> None:
    """``send_data_now(conn, stream, data)`` for each of h2's ``streams``, in that order, as one
    append to h2's buffer and with the connection's window lowered once: the frames of one
    event fanned out through one connection, which differ only in their stream id.

    The caller has checked what ``send_data_now`` checks, for all of them together: the
    connection open for sending and its window at least ``len(data)`` times the streams, and
    each stream open for sending with a window of at least ``len(data)``, which is at most
    ANY_PEER_FRAME_SIZE. tests/unit/test_h2_data_frames.py pins bytes and windows to h2's.
    """
    size = len(data)
    pack = _DATA_FRAME_HEADER.pack
    head = size << 8
    headers = []
    for stream in streams:
        headers.append(pack(head, 0, stream.stream_id))
        stream.outbound_flow_control_window -= size
    # header, data, header, data, ...: the data between the headers, and once more at the end
    conn._data_to_send += data.join(headers) + data
    conn.outbound_flow_control_window -= size * len(streams)


def _ended_by_peer(machine: Any, event: Any, events: list[Any]) -> None:
    """The END_STREAM of a lean receive path: HALF_CLOSED_REMOTE and h2's StreamEnded after ``event``."""
    machine.state = _HALF_CLOSED_REMOTE
    ended = StreamEnded(stream_id=event.stream_id)
    event.stream_ended = ended
    events.append(ended)
