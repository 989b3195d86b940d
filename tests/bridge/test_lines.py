"""Cutting stdin into lines no longer than the limit, whatever the chunks it arrives in."""

from __future__ import annotations

from bridge.lines import LineFramer, TooLong, leading_id


def _lines(framer: LineFramer, data: bytes, chunk: int) -> list[bytes | TooLong]:
    out: list[bytes | TooLong] = []
    for start in range(0, len(data), chunk):
        out += framer.feed(data[start : start + chunk])
    last = framer.end()
    return out + ([last] if last is not None else [])


def test_lines_come_out_whole_in_any_chunking_and_long_ones_only_as_their_head() -> None:
    data = b'{"id": 1}\n' + b"y" * 25 + b"\n\n" + b"z" * 10 + b"\n" + b"w" * 11 + b"\nlast"
    for chunk in (1, 3, 7, 64):
        framer = LineFramer(limit=10, head_bytes=4)
        assert _lines(framer, data, chunk) == [
            b'{"id": 1}',
            TooLong(b"yyyy"),
            b"",
            b"z" * 10,
            TooLong(b"wwww"),
            b"last",
        ], chunk


def test_a_long_line_is_not_held_while_it_streams_past() -> None:
    framer = LineFramer(limit=10, head_bytes=4)
    assert framer.feed(b"x" * 11) == [TooLong(b"xxxx")]
    for _ in range(1000):
        assert framer.feed(b"x" * 1000) == []
    assert framer.feed(b'x\n{"a":1}\n') == [b'{"a":1}']
    assert framer.end() is None


def test_the_id_is_read_from_the_object_s_own_members_only() -> None:
    assert leading_id(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"argu') == 7
    assert leading_id(b' {"id" : "a\\"b", "params"') == 'a"b'
    # An `id` inside params is not the request's; one after a cut-off value is not known.
    assert leading_id(b'{"method": "x", "params": {"id": 5, "text": "xxxx') is None
    assert leading_id(b'{"method": "x", "params": {"id": 5}, "id": 6}') == 6
    assert leading_id(b'{"id": null, "method"') is None
    assert leading_id(b'{"id": true}') is None
    assert leading_id(b'{"id": 12') is None  # cut off: 12 may be the start of 123
    assert leading_id(b"[1, 2]") is None
