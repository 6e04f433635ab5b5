"""The HTTP probe's response reader: its fast path decides exactly as the line-by-line reader.

``_read_response`` reads the usual answer (a plain head, a Content-Length, perhaps a
Connection field) with two regular expressions and no step per header line; everything else
goes through ``_read_head`` + ``_read_body``, the reader the fast path must agree with. The
responses here are built from the pieces that decide framing — version, status, framing fields
in any case, spacing and order, repeated or odd values, other fields around them, a body
shorter, equal to or longer than announced, the connection closed or not — and both readers
must return the same answer or raise the same error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healer.monitor.probes import _BODY_LIMIT, HttpProtocolError, _read_body, _read_head, _read_response

_NAMES = [
    "Content-Length",
    "content-length",
    "CONTENT-LENGTH",
    "Connection",
    "connection",
    "Transfer-Encoding",
]
_OTHER = ["Content-Type", "Date", "Server", "X-Content-Length", "Content-Lengthy", "Vary"]
_LENGTHS = ["0", "2", "5", "15", " 5 ", "5, 5", "5,6", "", "x", "+5", "²", "-1", str(_BODY_LIMIT + 1), "05"]
_CONNECTION = ["keep-alive", "close", "Keep-Alive, Upgrade", " close ", "upgrade", ""]


def _value(name: str, draw: st.DrawFn) -> str:
    low = name.lower()
    if low == "content-length":
        return draw(st.sampled_from(_LENGTHS))
    if low == "connection":
        return draw(st.sampled_from(_CONNECTION))
    if low == "transfer-encoding":
        return draw(st.sampled_from(["chunked", "gzip, chunked", "identity"]))
    return draw(st.sampled_from(["text/plain", "nginx", "Sat, 05 Dec 2026 12:00:00 GMT", "a:b"]))


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool]:
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.x"]))
    status = draw(st.sampled_from([200, 204, 301, 304, 404, 503]))
    reason = draw(st.sampled_from([" OK", "", " Not Found", " "]))
    names = draw(st.lists(st.sampled_from(_NAMES + _OTHER), max_size=5))
    lines = []
    for name in names:
        space = draw(st.sampled_from(["", " ", "  ", "\t"]))
        trail = draw(st.sampled_from(["", " ", "\t"]))
        lines.append(f"{name}:{space}{_value(name, draw)}{trail}\r\n")
    head = f"{version} {status}{reason}\r\n{''.join(lines)}\r\n".encode("latin-1")
    over = b"x" * (_BODY_LIMIT + 1)  # against a Content-Length of the limit + 1: the limit's edge
    body = draw(st.sampled_from([b"", b"ok", b"hello", b"hello world!!!!", b"3\r\nhel\r\n0\r\n\r\n", over]))
    extra = draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n"]))  # a pipelined next answer
    return head + body + extra, draw(st.booleans())


def _fast(buf: bytearray, eof: bool) -> object:
    try:
        return _read_response(buf, eof)
    except HttpProtocolError as exc:
        return ("error", str(exc))


def _general(buf: bytearray, eof: bool) -> object:
    try:
        head = _read_head(buf)
        return None if head is None else _read_body(buf, eof, *head)
    except HttpProtocolError as exc:
        return ("error", str(exc))


@settings(max_examples=600, deadline=None)
@given(responses())
def test_the_fast_reader_decides_as_the_line_by_line_reader(response: tuple[bytes, bool]) -> None:
    raw, eof = response
    for cut in (len(raw), len(raw) - 1, raw.find(b"\r\n\r\n") + 4):  # whole, one short, head only
        buf = bytearray(raw[:cut])
        assert _fast(buf, eof) == _general(buf, eof), bytes(buf)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, b"ok", True)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", None),  # the body is not all there
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, b"ok", False)),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", (200, b"ok", True)),
        (b"HTTP/1.1 503 Busy\r\nconnection: Close\r\ncontent-length: 4\r\n\r\nbusy", (503, b"busy", False)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", (200, b"ok", False)),  # bytes past it
        # One byte over the body limit: judged on the limit's worth, the connection not reused.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (_BODY_LIMIT + 1) + b"x" * (_BODY_LIMIT + 1),
            (200, b"x" * _BODY_LIMIT, False),
        ),
    ],
)
def test_the_usual_answers(raw: bytes, expected: tuple[int, bytes, bool] | None) -> None:
    assert _read_response(bytearray(raw), eof=False) == expected


def test_a_content_length_in_other_digits_is_a_protocol_error_not_a_crash() -> None:
    raw = "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\nok".encode("latin-1")
    with pytest.raises(HttpProtocolError, match="bad Content-Length"):
        _read_response(bytearray(raw), eof=False)
