"""Control-frame vectors (SPEC §8): good frames as their sender writes them, bad ones
with the error each side's reader answers, and the JSON that describes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beambridge import control
from beambridge.etf import Atom, decode, encode

from .raw_etf import FUN, NO_BODY, PID, SLICE, body_etf, etf, inner, raw_frame, raw_list, raw_tuple
from .term_json import error_json, term_json

A = Atom

#: What python/beambridge says of every control frame it refuses.
REFUSED = {"reason": "bad_term", "field": "envelope"}


def beam_refuses(reason: str, field: str = "control_frame") -> dict[str, str]:
    """The error elixir/lib answers a worker's bad frame with (kind ``bad_frame``)."""
    return {"kind": "bad_frame", "reason": reason, "field": field}


@dataclass(frozen=True)
class ControlVector:
    name: str
    description: str
    sender: str  # "beam" or "worker": who sends the frame
    frame: bytes
    envelope: Any = None  # good: the envelope term
    body: Any = NO_BODY  # good: the body term, or NO_BODY
    beam: dict[str, str] | None = None  # bad: elixir/lib's error
    worker: dict[str, str] | None = None  # bad: python/beambridge's error
    xfail: str | None = None

    @property
    def valid(self) -> bool:
        return self.beam is None and self.worker is None


def good_control(
    name: str, description: str, sender: str, envelope: Any, body: Any = NO_BODY
) -> ControlVector:
    """A frame as its sender writes it: the BEAM with ``term_to_binary`` (OTP 26's
    encoding: UTF-8 atoms, STRING_EXT for lists of bytes, map keys in term order), the
    worker with `beambridge.control.join`, which writes the same bytes."""
    parts = control.join(envelope, None if body is NO_BODY else [encode(body)])
    frame = b"".join(bytes(p) for p in parts)
    assert frame == raw_frame(encode(envelope), body_etf(body)), name
    return ControlVector(name, description, sender, frame, envelope, body)


def bad_control(
    name: str,
    description: str,
    sender: str,
    frame: bytes,
    *,
    beam: dict[str, str] | None = None,
    worker: dict[str, str] | None = REFUSED,
    xfail: str | None = None,
) -> ControlVector:
    return ControlVector(name, description, sender, frame, beam=beam, worker=worker, xfail=xfail)


NONCE_1, NONCE_2 = 0x0123456789ABCDEF, 0xFEDCBA9876543210


def control_vectors() -> list[ControlVector]:
    call = A("call")
    v = [
        # ---- BEAM -> worker, good
        good_control("good_beam_object_arena", "the BEAM announces an arena of its own",
                     "beam", (A("object"), A("arena"), 4242, 17, 1, 8 << 20, NONCE_1)),
        good_control("good_beam_object_lease_table",
                     "the BEAM announces the worker's lease table (65536 tickets)", "beam",
                     (A("object"), A("lease_table"), 4242, 18, 2, 528384, NONCE_2)),
        good_control("good_beam_object_dropped", "the BEAM dropped its arena 3", "beam",
                     (A("object_dropped"), 3)),
        good_control("good_beam_call", "a call with atom names, no options, no slices",
                     "beam", (call, 1, A("statistics"), A("mean"), {}, []), [[1, 2, 3]]),
        good_control("good_beam_call_binary_names",
                     "a call naming its module and function with binaries", "beam",
                     (call, 2, b"mymod.sub", b"handler", {}, []),
                     [b"abc", 1.5, None, (A("ok"), -1)]),
        good_control("good_beam_call_options", "a call with the format option, no slices",
                     "beam", (call, 3, A("statistics"), A("mean"), {b"format": b"packed"}, []),
                     [[0.5, 1.5, 2.5]]),
        good_control("good_beam_call_slices",
                     "a call lending two slices, named by handles in the body", "beam",
                     (call, 4, A("statistics"), A("mean"), {},
                      [(1, 128, 4096, 7), (2, 64, 256, 8)]),
                     [(SLICE, A("binary"), 0), (SLICE, A("packed"), 1)]),
        good_control("good_beam_call_options_slices",
                     "a call with the largest id, options (one unknown, ignored) and a slice",
                     "beam",
                     (call, 2**64 - 1, b"m", b"f", {b"format": b"arrow", b"x_unknown": 1},
                      [(70000, 2**40 - 128, 128, 2**63)]),
                     [(SLICE, A("records"), 0), {b"k": [1, 2]}]),
        good_control("good_beam_sealed_mapped", "sealed objects 5 and 6 are mapped "
                     "(a list of bytes: STRING_EXT)", "beam", (A("sealed_mapped"), [5, 6])),
        good_control("good_beam_sealed_mapped_large_ids", "sealed objects 256 and 70000 "
                     "are mapped (LIST_EXT)", "beam", (A("sealed_mapped"), [256, 70000])),
        good_control("good_beam_sealed_mapped_empty", "an empty sealed_mapped list", "beam",
                     (A("sealed_mapped"), [])),
        good_control("good_beam_shutdown", "shutdown", "beam", A("shutdown")),
        good_control("good_beam_object_lane", "the BEAM announces the worker's lane (2.2)",
                     "beam", (A("object"), A("lane"), 4242, 19, 3, 135168, NONCE_1)),
        good_control("good_beam_lane", "a call waits in the lane (2.2)", "beam", A("lane")),
        good_control("good_beam_call_stream", "a stream call (2.3): window 4, resumed after "
                     "3 elements from checkpoint \"3\"", "beam",
                     (call, 20, A("reader"), A("batches"),
                      {b"stream": {b"checkpoint": b"3", b"checksum": 2**63 + 5, b"seq": 3,
                                   b"skip": 0, b"window": 4}}, []),
                     [b"data.parquet"]),
        good_control("good_beam_call_stream_argument", "a call whose argument is stream 1 "
                     "(2.3)", "beam", (call, 21, A("hasher"), A("sha256"), {}, []),
                     [(A("$bb_stream"), 1)]),
        good_control("good_beam_call_chunked", "a call whose 80 MiB binary argument comes "
                     "as the chunks of stream 1 (2.3)", "beam",
                     (call, 22, A("m"), A("f"), {}, []),
                     [(A("$bb_chunked"), A("binary"), 1, 83886083)]),
        good_control("good_beam_element", "element 1 of argument stream 1, in a slice (2.3)",
                     "beam", (A("element"), 21, 1, 1, None, [(1, 64, 4194432, 9)]),
                     (SLICE, A("binary"), 0)),
        good_control("good_beam_ack", "the BEAM took elements up to 4 of the result stream",
                     "beam", (A("ack"), 20, 0, 4)),
        good_control("good_beam_done", "argument stream 1 ended after 12 elements", "beam",
                     (A("done"), 21, 1, 12, 2**64 - 1)),
        good_control("good_beam_cancel", "the consumer stops the result stream", "beam",
                     (A("cancel"), 20, 0)),
        good_control("good_beam_abort", "the enumerable feeding stream 1 raised", "beam",
                     (A("abort"), 21, 1, b"File.Error: could not read file")),
        # ---- worker -> BEAM, good
        good_control("good_worker_ready", "the worker's first frame, version 2.0", "worker",
                     (A("ready"), 4321, (2, 0))),
        good_control("good_worker_ready_minor", "a worker of a newer minor version, 2.7",
                     "worker", (A("ready"), 4321, (2, 7))),
        good_control("good_worker_object_arena", "the worker announces an arena", "worker",
                     (A("object"), A("arena"), 4321, 5, 1, 16 << 20, NONCE_1)),
        good_control("good_worker_object_sealed", "the worker announces a sealed object",
                     "worker", (A("object"), A("sealed"), 4321, 6, 2, 8192, NONCE_2)),
        good_control("good_worker_object_dropped", "the worker dropped its arena 1", "worker",
                     (A("object_dropped"), 1)),
        good_control("good_worker_ok", "an answer without slices, releasing nothing",
                     "worker", (A("ok"), 7, [], []), (A("ok"), [1, 2.5], b"three")),
        good_control("good_worker_ok_timed", "since 2.5: an answer with the worker's "
                     "timings {decode, run, encode} in microseconds", "worker",
                     (A("ok"), 7, [], [], (120, 45000, 30)), (A("ok"), [1, 2.5], b"three")),
        good_control("good_worker_ok_worker_slice",
                     "an answer naming a slice of a worker arena, lent under ticket 0; one "
                     "BEAM slice released", "worker",
                     (A("ok"), 8, [control.worker_slice(1, 64, 4096, 12, 0)], [(3, 128, 5)]),
                     (SLICE, A("tensor"), 0)),
        good_control("good_worker_ok_sealed_slice", "an answer naming the frame of a "
                     "sealed object", "worker",
                     (A("ok"), 9, [control.sealed_slice(2, 64, 8128, 13)], []),
                     (SLICE, A("arrow"), 0)),
        good_control("good_worker_ok_beam_slice", "an answer echoing bytes 128..1128 of a "
                     "BEAM slice the worker holds", "worker",
                     (A("ok"), 10, [control.beam_slice(3, 128, 5, 128, 1000)], []),
                     (SLICE, A("binary"), 0)),
        good_control("good_worker_ok_all_slices", "an answer naming one slice of each "
                     "kind of entry, releasing another BEAM slice", "worker",
                     (A("ok"), 11,
                      [control.worker_slice(1, 4160, 256, 14, 1),
                       control.sealed_slice(4, 64, 128, 15),
                       control.beam_slice(3, 128, 5, 256, 0)],
                      [(3, 4224, 6)]),
                     [(SLICE, A("packed"), 0), (SLICE, A("custom"), 1), (SLICE, A("binary"), 2)]),
        good_control("good_worker_error_python_exception", "the handler raised", "worker",
                     (A("error"), 12,
                      control.python_exception(b"ValueError", b"x must be positive",
                                               b"Traceback (most recent call last):\n"),
                      [])),
        good_control("good_worker_error_timed", "since 2.5: the handler raised after "
                     "running 2.5 s, with the worker's timings", "worker",
                     (A("error"), 12, control.python_exception(b"KeyError", b"'x'", b""), [],
                      (3, 2500000, 41))),
        good_control("good_worker_error_bad_call", "the call was wrong (no such function); "
                     "one BEAM slice released", "worker",
                     (A("error"), 13,
                      control.bad_call("no_function", b"module m has no function f"),
                      [(3, 128, 5)])),
        good_control("good_worker_released", "two BEAM slices released between calls",
                     "worker", (A("released"), [(3, 128, 5), (3, 4224, 6)])),
        good_control("good_worker_released_empty", "an empty released list", "worker",
                     (A("released"), [])),
        good_control("good_worker_fallbacks", "two results of a call went inline although "
                     "due a slice: one binary (arena full), one tensor (no ticket)", "worker",
                     control.fallbacks({("raw", "arena_full"): [1, 400_000],
                                        ("tensor", "no_tickets"): [1, 65_664]})),
        good_control("good_worker_lane", "the answer waits in the lane (2.2)", "worker",
                     A("lane")),
        good_control("good_worker_element", "element 5 of the result stream, a checkpoint, "
                     "in a worker slice (2.3)", "worker",
                     (A("element"), 20, 0, 5, b"6", [control.worker_slice(1, 64, 4096, 12, 3)]),
                     (SLICE, A("tensor"), 0)),
        good_control("good_worker_element_inline", "element 1 of the result stream, inline, "
                     "no checkpoint", "worker", (A("element"), 20, 0, 1, None, []),
                     [1, b"two"]),
        good_control("good_worker_element_chunk", "chunk 1 of a chunked result binary, "
                     "stream 1, in a worker slice (2.3)", "worker",
                     (A("element"), 20, 1, 1, None, [control.worker_slice(1, 64, 4194432, 13, 4)]),
                     (SLICE, A("binary"), 0)),
        good_control("good_worker_ack", "the worker took elements up to 2 of stream 1",
                     "worker", (A("ack"), 21, 1, 2)),
        good_control("good_worker_done", "the result stream ended after 9 elements: the "
                     "answer", "worker", (A("done"), 20, 0, 9, 81985529216486895)),
        good_control("good_worker_log_stdout", "a handler printed a line", "worker",
                     (A("log"), A("stdout"), b"hello\n")),
        good_control("good_worker_log_stderr", "a library warned on stderr", "worker",
                     (A("log"), A("stderr"), b"warning: \xff not UTF-8\n")),
    ]  # fmt: skip
    # ---- BEAM -> worker, bad (the worker is the receiver; the BEAM's splitter is run on
    # them too and, where it refuses, its error is given as well)
    dropped = encode((A("object_dropped"), 3))
    v += [
        bad_control("bad_beam_envelope_past_frame", "envelope_size one byte past the frame",
                    "beam", raw_frame(dropped, size=len(dropped) + 1),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_beam_no_envelope_size", "a frame of 3 bytes", "beam", b"\x00\x00\x01",
                    beam=beam_refuses("bad_term")),
        bad_control("bad_beam_envelope_pid", "{:object_dropped, pid}: a PID is not safe ETF",
                    "beam", raw_frame(etf(raw_tuple(inner(A("object_dropped")), PID)))),
        bad_control("bad_beam_envelope_improper_list", "{:sealed_mapped, [1 | 2]}",
                    "beam", raw_frame(etf(raw_tuple(inner(A("sealed_mapped")),
                                                    raw_list([inner(1)], inner(2)))))),
        bad_control("bad_beam_envelope_fun", "{:object_dropped, fun erlang:node/0}",
                    "beam", raw_frame(etf(raw_tuple(inner(A("object_dropped")), FUN)))),
        bad_control("bad_beam_unknown_tag", "{:exit, 3}: object_dropped's shape, unknown tag",
                    "beam", raw_frame(encode((A("exit"), 3)))),
        bad_control("bad_beam_object_dropped_arity", "{:object_dropped, 3, 4}", "beam",
                    raw_frame(encode((A("object_dropped"), 3, 4)))),
        bad_control("bad_beam_call_arity", "a call of 5 elements (no slices), with a body",
                    "beam", raw_frame(encode((call, 1, A("m"), A("f"), {})), encode([]))),
        bad_control("bad_beam_call_id_0", "a call whose id is 0", "beam",
                    raw_frame(encode((call, 0, A("m"), A("f"), {}, [])), encode([]))),
        bad_control("bad_beam_object_sealed", "the BEAM announces an object of kind "
                    "sealed (only workers own those)", "beam",
                    raw_frame(encode((A("object"), A("sealed"), 4242, 17, 1, 8192, NONCE_1)))),
        bad_control("bad_beam_lane_body", "lane with a body", "beam",
                    raw_frame(encode(A("lane")), encode([]))),
        bad_control("bad_beam_object_dropped_body", "object_dropped with a body", "beam",
                    raw_frame(dropped, encode([]))),
        bad_control("bad_beam_element_no_body", "an element without its body", "beam",
                    raw_frame(encode((A("element"), 21, 1, 1, None, [])))),
        bad_control("bad_beam_element_seq_0", "element 0 (elements count from 1)", "beam",
                    raw_frame(encode((A("element"), 21, 1, 0, None, [])), encode(1))),
        bad_control("bad_beam_ack_body", "an ack with a body", "beam",
                    raw_frame(encode((A("ack"), 20, 0, 1)), encode([]))),
        bad_control("bad_beam_element_checkpoint", "a checkpoint that is no binary", "beam",
                    raw_frame(encode((A("element"), 21, 1, 1, 7, [])), encode(1))),
        bad_control("bad_beam_shutdown_body", "shutdown with a body", "beam",
                    raw_frame(encode(A("shutdown")), encode([]))),
    ]  # fmt: skip
    # ---- worker -> BEAM, bad (the BEAM is the receiver; the Python package's reader of
    # worker frames, which the worker harness uses, is run on them too)
    unexpected = beam_refuses("unexpected_message")
    ok_empty = encode((A("ok"), 7, [], []))
    released = encode((A("released"), [(3, 128, 5)]))
    v += [
        bad_control("bad_worker_envelope_past_frame", "envelope_size one byte past the frame",
                    "worker", raw_frame(ok_empty, encode(1), size=len(ok_empty) + 4),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_worker_no_envelope_size", "a frame of 3 bytes", "worker",
                    b"\x00\x00\x01", beam=beam_refuses("bad_term")),
        bad_control("bad_worker_envelope_pid", "{:object_dropped, pid}: a PID is not safe "
                    "ETF (binary_to_term/2 [:safe] takes it; the message check refuses it)",
                    "worker", raw_frame(etf(raw_tuple(inner(A("object_dropped")), PID))),
                    beam=unexpected),
        bad_control("bad_worker_envelope_improper_list", "{:ready, 4321, [2 | 0]}",
                    "worker", raw_frame(etf(raw_tuple(inner(A("ready")), inner(4321),
                                                      raw_list([inner(2)], inner(0))))),
                    beam=unexpected),
        bad_control("bad_worker_envelope_fun", "{:log, :stdout, fun erlang:node/0}", "worker",
                    raw_frame(etf(raw_tuple(inner(A("log")), inner(A("stdout")), FUN))),
                    beam=unexpected),
        bad_control("bad_worker_unknown_tag", "{:exit, 7, [], []} + body: ok's shape, a tag "
                    "that is no message", "worker",
                    raw_frame(encode((A("exit"), 7, [], [])), encode(1)), beam=unexpected),
        bad_control("bad_worker_new_atom_tag", "a tag that is an atom no VM has "
                    "(bb_golden_vector_tag_nobody_made): [:safe] refuses to create it",
                    "worker", raw_frame(encode((A("bb_golden_vector_tag_nobody_made"), 1))),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_worker_object_dropped_arity", "{:object_dropped, 1, 2}", "worker",
                    raw_frame(encode((A("object_dropped"), 1, 2))), beam=unexpected),
        bad_control("bad_worker_error_detail", "{:error, 7, \"oops\", []}: the error is no "
                    "python_exception or bad_call tuple", "worker",
                    raw_frame(encode((A("error"), 7, b"oops", []))), beam=unexpected),
        bad_control("bad_worker_ok_entry_arity", "an answer whose slice entry "
                    "{:worker, 1, 64, 4096} has too few elements", "worker",
                    raw_frame(encode((A("ok"), 7, [(A("worker"), 1, 64, 4096)], [])),
                              encode((SLICE, A("tensor"), 0))),
                    beam=beam_refuses("bad_slice", "slices")),
        bad_control("bad_worker_ok_timings_negative", "since 2.5: timings {1, -2, 3}: "
                    "microseconds are never negative", "worker",
                    raw_frame(encode((A("ok"), 7, [], [], (1, -2, 3))), encode(1)),
                    beam=unexpected),
        bad_control("bad_worker_ok_timings_arity", "since 2.5: timings {1, 2}: three "
                    "numbers or none", "worker",
                    raw_frame(encode((A("ok"), 7, [], [], (1, 2))), encode(1)),
                    beam=unexpected),
        bad_control("bad_worker_error_timings_list", "since 2.5: an error whose timings are "
                    "a list", "worker",
                    raw_frame(encode((A("error"), 7,
                                      control.bad_call("badarg", b"no"), [], [1, 2, 3]))),
                    beam=unexpected),
        bad_control("bad_worker_ok_no_body", "an ok answer without its body", "worker",
                    raw_frame(ok_empty), beam=beam_refuses("bad_term")),
        bad_control("bad_worker_object_lane", "the worker announces a lane (only the BEAM "
                    "makes those)", "worker",
                    raw_frame(encode((A("object"), A("lane"), 4321, 7, 3, 135168, NONCE_1))),
                    beam=beam_refuses("bad_slice", "slices")),
        bad_control("bad_worker_cancel", "the worker cancels (only a consumer does, and the "
                    "worker consumes no stream it could cancel)", "worker",
                    raw_frame(encode((A("cancel"), 7, 0))), beam=unexpected),
        bad_control("bad_worker_element_no_body", "an element without its body", "worker",
                    raw_frame(encode((A("element"), 7, 0, 1, None, []))), beam=unexpected),
        bad_control("bad_worker_done_arity", "{:done, 7, 0, 3}: no checksum", "worker",
                    raw_frame(encode((A("done"), 7, 0, 3))), beam=unexpected),
        bad_control("bad_worker_released_body", "released with a body", "worker",
                    raw_frame(released, encode([])), beam=unexpected),
        bad_control("bad_worker_released_improper_list", "{:released, [{3, 128, 5} | 0]}",
                    "worker", raw_frame(etf(raw_tuple(inner(A("released")),
                                                      raw_list([inner((3, 128, 5))],
                                                               inner(0))))),
                    beam=beam_refuses("bad_slice", "slices")),
        bad_control("bad_worker_fallbacks_unknown_form", "{:fallbacks, [{\"video\", "
                    "\"arena_full\", 1, 10}]}: a form that is no stats form", "worker",
                    raw_frame(encode((A("fallbacks"), [(b"video", b"arena_full", 1, 10)]))),
                    beam=unexpected),
        bad_control("bad_worker_fallbacks_negative", "{:fallbacks, [{\"raw\", "
                    "\"arena_full\", -1, 10}]}: a negative count", "worker",
                    raw_frame(encode((A("fallbacks"), [(b"raw", b"arena_full", -1, 10)]))),
                    beam=unexpected),
        bad_control("bad_worker_envelope_trailing_bytes", "an envelope of {:object_dropped, "
                    "1} and one byte more inside envelope_size", "worker",
                    raw_frame(encode((A("object_dropped"), 1)) + b"\x00"),
                    beam=beam_refuses("bad_term")),
    ]  # fmt: skip
    return v


def check_control(v: ControlVector) -> dict[str, Any]:
    """The vector checked with the package (its receiver's reader for ``from: beam``,
    the reader of worker frames for ``from: worker``); its JSON."""
    read = control.from_beam if v.sender == "beam" else control.from_worker
    doc: dict[str, Any] = {"name": v.name, "description": v.description, "from": v.sender}
    doc.update(valid=v.valid, frame_size=len(v.frame))
    if v.xfail:
        doc["xfail"] = v.xfail
    try:
        envelope, body = control.split(v.frame)
        read(envelope, body is not None)
    except control.ProtocolError as exc:
        if v.valid or {"reason": exc.reason, "field": exc.field} != v.worker:
            raise AssertionError(f"{v.name}: refused with {exc.reason}/{exc.field}") from exc
        doc["error"] = error_json(v.beam, v.worker)
        return doc
    if not v.valid:
        raise AssertionError(f"{v.name}: accepted, meant to be refused with {v.worker}")
    assert term_json(envelope) == term_json(v.envelope), v.name
    if v.sender == "beam":
        _check_erlang_order(v.envelope, v.name)
    doc["envelope"] = term_json(envelope)
    if v.body is NO_BODY:
        assert body is None, v.name
        doc["body"] = None
    else:
        assert body is not None and term_json(decode(body)) == term_json(v.body), v.name
        doc["body"] = term_json(decode(body))
    return doc


def _check_erlang_order(term: Any, name: str) -> None:
    """A map the BEAM sends has its keys in term order (term_to_binary writes them so);
    the maps of these vectors have binary keys only."""
    if type(term) in (list, tuple):
        for item in term:
            _check_erlang_order(item, name)
    elif type(term) is dict:
        keys = list(term)
        assert all(type(k) is bytes for k in keys) and keys == sorted(keys), name
