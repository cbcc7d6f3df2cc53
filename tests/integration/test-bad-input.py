#!/usr/bin/python3
"""test-bad-input.py: every malformed or hostile input of the foundation
issue ("Bad input"), sent to a real "snapvol serve".

For each case: the exact answer the client gets (an option error, a
command error, or a hard disconnect where the protocol allows nothing
else), and then that
  - the server is still running,
  - the same connection still works where the protocol lets it go on
    (after an option error: LIST and GO; after a command error: a READ),
  - a new connection works, and a "bystander" connection opened before
    all cases still reads correctly,
  - no byte of any volume changed (sha256 of the raw files), no raw file
    grew, and no file appeared or vanished anywhere in the pool,
  - every connection the case opened is gone from the server ("snapvol
    status") within 5 s of its client going: no stuck connection threads.

A few cases check the reply shapes the others rely on (structured reads
over data and holes, DF, block status with REQ_ONE), pipelining (256
mixed requests in flight, replies matched by handle) and a client that
stops reading its replies.

Rejected WRITE payloads carry smuggled, well-formed WRITE requests that
would overwrite volume data if the server lost track of the framing
(executed them instead of skipping the payload).

Cases that need a feature not built yet (read-only snapshot exports) are
reported as SKIP with the reason.  Raw protocol via svtest.RawNBD; real
client via python3-libnbd.
"""

import json
import os
import socket
import struct
import sys
import traceback
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 128 * MiB     # vm1: larger than 2 x 32 MiB so "too big" is not "past the end"
SIZE2 = 1 * MiB      # vm2: a neighbour that nothing may touch

pool = Pool()
runner = Runner()
srv = None
ref = {}             # reference bytes of vm1
expect_sha = {}
expect_sizes = {}
tree = None
bystander = None


def pool_tree():
    out = set()
    for root, dirs, files in os.walk(pool.tmp):
        for n in dirs + files:
            p = os.path.join(root, n)
            if p.endswith("serve.log"):
                continue
            out.add(os.path.relpath(p, pool.tmp))
    return out


def smuggled_payload(length):
    """length bytes that, if parsed as requests, are WRITEs of b'EVIL' over
    the start of vm1 (handle 0xBAD)."""
    unit = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 0xBAD, 0, 512) + b"EVIL" * 128
    reps = length // len(unit) + 1
    return (unit * reps)[:length]


def after_case(conns_before):
    """The invariants every case must leave intact."""
    check(srv.alive(), "server is no longer running\n" + srv.log_tail())
    for v in ("vm1", "vm2"):
        check(os.path.getsize(pool.origin(v)) == expect_sizes[v],
              f"{v} raw file size changed to {os.path.getsize(pool.origin(v))}")
        check(pool.sha(v) == expect_sha[v], f"{v} contents changed")
    now = pool_tree()
    check(now == tree, f"pool files changed: added {sorted(now - tree)}, "
                       f"removed {sorted(tree - now)}")
    h = nbd.NBD()
    h.connect_uri(srv.uri("vm1"))
    check(h.pread(4096, 0) == ref["head"], "new connection reads wrong data at 0")
    check(h.pread(4096, SIZE - 4096) == ref["tail"], "new connection reads wrong data at end")
    h.shutdown()
    check(bystander.pread(4096, 0) == ref["head"], "bystander connection reads wrong data")
    # Every connection the case opened is gone from the server within 5 s
    # ("status" lists the server's connections).
    for _ in range(50):
        left = server_connections() - conns_before
        if not left:
            break
        time.sleep(0.1)
    check(not left, f"{len(left)} connection(s) opened by this case still open on the server "
                    f"5 s after their clients went: ids {sorted(left)}")


def server_connections():
    st = json.loads(pool.cli("status", "--json").stdout)
    return {x["id"] for x in st.get("connections", [])}


def case(name, fn, *args):
    def run():
        before = server_connections()
        fn(*args)
        after_case(before)
    runner.case(name, run)


def same_conn_ok(c):
    """After an option error the same connection negotiates on: LIST, GO,
    READ."""
    names = c.list_exports()
    check(sorted(names) == ["vm1", "vm2"], f"LIST afterwards: {names}")
    t, info = c.go("vm1")
    check(t == REP_ACK, f"GO vm1 afterwards: {rep_name(t)}")
    check(info["size"] == SIZE, f"GO vm1 size {info['size']}")
    check(c.read(0, 4096) == ref["head"], "READ afterwards: wrong data")


def expect_closed(c, what):
    check(c.closed_by_server(5.0), f"{what}: server did not close the connection within 5 s")


def expect_opt_error(c, opt, data, allowed, what, **kw):
    t = c.final(opt, data, **kw)
    check(t in allowed, f"{what}: got {rep_name(t)}, want one of "
                        f"{[rep_name(a) for a in allowed]}")
    return t


# ======================= handshake cases =======================

def c_bad_option_magic():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.send_opt(OPT_LIST, magic=0x49484156454F5055)  # 'IHAVEOPU'
        expect_closed(c, "option with wrong magic")


def c_garbage_instead_of_options():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        expect_closed(c, "HTTP request instead of options")


def c_unknown_client_flags():
    # proto.md: "the server MUST drop the TCP connection if the client sets
    # an unknown flag".
    with RawNBD(srv.nbd_sock) as c:
        c.greeting()
        c.send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | 0x80))
        expect_closed(c, "unknown client flag 0x80")


def c_no_zeroes_not_offered():
    with RawNBD(srv.nbd_sock) as c:
        hf = c.greeting()
        if hf & FLAG_NO_ZEROES:
            raise Skip("server offers NO_ZEROES, so the client may set it")
        c.send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        expect_closed(c, "C_NO_ZEROES without the server offering it")


def c_no_fixed_newstyle():
    # Allowed: serve plain newstyle (EXPORT_NAME works), or close.
    with RawNBD(srv.nbd_sock) as c:
        c.greeting()
        c.send(struct.pack(">I", 0))
        try:
            size, flags = c.export_name("vm1")
        except Closed:
            print("    (server closes a client without FIXED_NEWSTYLE)")
            return
        check(size == SIZE, f"size {size} via non-fixed newstyle")
        check(c.read(0, 4096) == ref["head"], "read via non-fixed newstyle")
        print("    (server accepts a client without FIXED_NEWSTYLE via EXPORT_NAME)")


def c_truncated_option_eof():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0\0\x03vm1")
        c.s.shutdown(socket.SHUT_WR)
        expect_closed(c, "option cut short by EOF")


def c_truncated_header_eof():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.send(struct.pack(">Q", IHAVEOPT) + b"\0\0")
        c.s.shutdown(socket.SHUT_WR)
        expect_closed(c, "option header cut short by EOF")


def c_stalled_client_does_not_block_others():
    # A client stuck mid-option must not hold up anyone else.
    stalled = []
    try:
        for _ in range(20):
            c = RawNBD(srv.nbd_sock)
            c.handshake()
            c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0")
            stalled.append(c)
        t0 = time.time()
        h = nbd.NBD()
        h.connect_uri(srv.uri("vm1"))
        check(h.pread(4096, 0) == ref["head"], "read while 20 clients stall")
        h.shutdown()
        check(time.time() - t0 < 5, "a new client waited for stalled ones")
    finally:
        for c in stalled:
            c.close()


def c_go_name_length_past_option():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        # name length 100, but the option holds only 4 more bytes
        expect_opt_error(c, OPT_GO, struct.pack(">I", 100) + b"vm1\0",
                         {REP_ERR_INVALID}, "GO with name length past the option")
        same_conn_ok(c)


def c_go_info_count_past_option():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        data = struct.pack(">I", 3) + b"vm1" + struct.pack(">HH", 5, INFO_BLOCK_SIZE)
        expect_opt_error(c, OPT_GO, data, {REP_ERR_INVALID}, "GO claiming 5 info requests, holding 1")
        same_conn_ok(c)


def c_go_trailing_bytes():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        data = RawNBD.go_data(b"vm1", [INFO_BLOCK_SIZE]) + b"junk"
        expect_opt_error(c, OPT_GO, data, {REP_ERR_INVALID}, "GO with trailing bytes")
        same_conn_ok(c)


def c_go_too_short():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        expect_opt_error(c, OPT_GO, b"\0\0", {REP_ERR_INVALID}, "GO with 2 bytes of data")
        expect_opt_error(c, OPT_INFO, b"", {REP_ERR_INVALID}, "INFO with no data")
        same_conn_ok(c)


def c_list_with_data():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        expect_opt_error(c, OPT_LIST, b"abcd", {REP_ERR_INVALID}, "LIST with data")
        same_conn_ok(c)


def c_structured_reply_with_data():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        expect_opt_error(c, OPT_STRUCTURED_REPLY, b"x", {REP_ERR_INVALID},
                         "STRUCTURED_REPLY with data")
        same_conn_ok(c)


def c_unknown_options():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        for opt in (OPT_PEEK, 0x4242, 0x7FFFFFFF, 0xFFFFFFFF):
            expect_opt_error(c, opt, b"some data", {REP_ERR_UNSUP}, f"unknown option {opt:#x}")
        same_conn_ok(c)


def c_starttls_without_tls():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        expect_opt_error(c, OPT_STARTTLS, b"", {REP_ERR_UNSUP, REP_ERR_POLICY},
                         "STARTTLS on a server without TLS")
        same_conn_ok(c)


def c_oversized_option():
    # 1 MiB of option data, sent in full: the server answers ERR_TOO_BIG
    # (or another error) and may go on, or closes.  It must not act on it.
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        data = RawNBD.go_data(b"vm1" * 10, []) + bytes(MiB)
        t, box = c.send_in_thread(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        try:
            opt, rtype, _ = c.read_opt_reply()
        except Closed:
            print("    (1 MiB option: server closes)")
            return
        t.join(10)
        check(rtype & REP_ERR, f"1 MiB GO option answered {rep_name(rtype)}")
        print(f"    (1 MiB option: {rep_name(rtype)})")
        if rtype in (REP_ERR_TOO_BIG, REP_ERR_INVALID) and "error" not in box:
            if not c.closed_by_server(0.5):
                same_conn_ok(c)


def c_huge_option_length():
    # Header says 4 GiB - 1 of data and none follows: the server must answer
    # or hang up now, not wait for 4 GiB (a client would hang forever).
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFFF))
        try:
            c.s.settimeout(5)
            opt, rtype, _ = c.read_opt_reply()
            check(rtype & REP_ERR, f"4 GiB option answered {rep_name(rtype)}")
            print(f"    (4 GiB option: {rep_name(rtype)})")
        except Closed:
            print("    (4 GiB option: server closes)")
        except Timeout:
            raise AssertionError("option with length 0xffffffff: no reply and no "
                                 "disconnect within 5 s (server waits for 4 GiB?)")


def c_export_name_too_long():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        for n in (4097, 5000, 65000):
            t, _ = c.go(b"a" * n)
            check(t in (REP_ERR_INVALID, REP_ERR_TOO_BIG),
                  f"GO with a {n}-byte name: {rep_name(t)}, want ERR_INVALID or ERR_TOO_BIG")
            t, _ = c.go(b"a" * n, opt=OPT_INFO)
            check(t in (REP_ERR_INVALID, REP_ERR_TOO_BIG),
                  f"INFO with a {n}-byte name: {rep_name(t)}")
        # 4096 bytes is a legal NBD string, but no volume has such a name.
        t, _ = c.go(b"a" * 4096)
        check(t in (REP_ERR_UNKNOWN, REP_ERR_INVALID), f"GO with a 4096-byte name: {rep_name(t)}")
        same_conn_ok(c)
    # EXPORT_NAME cannot answer an error: it must hang up.
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        try:
            c.export_name(b"b" * 5000)
            raise AssertionError("EXPORT_NAME with a 5000-byte name was accepted")
        except Closed:
            pass


BAD_NAMES = [b"a/b", b"../vm1", b"..", b".", b"/vm1", b"vm1/", b"vm1/.", b"./vm1",
             b"vm1/../vm1", b"volumes/vm1", b"../pool/volumes/vm1", b"vm1\0", b"vm1\0x",
             b"vm1\n", b"\x01", b"vm\x7f1", b"vm1\r", b"\tvm1", b" vm1", b"vm1 ", b"VM1",
             b"vm1@", b"@", b"@vm1", b"vm1@@x", b"vm1@a/b", b"vm1@..", b"\xff\xfe",
             b"vm1\xc0\xaf", b"-vm1", b"vm1" * 30]


def c_bad_export_names():
    # Each must get ERR_UNKNOWN or ERR_INVALID, and negotiation goes on.  A
    # name with a NUL breaks a MUST of the protocol's strings, so for those
    # a hard disconnect is allowed too.
    c = RawNBD(srv.nbd_sock)
    c.handshake()
    try:
        for name in BAD_NAMES:
            for opt in (OPT_INFO, OPT_GO):
                what = f"{'GO' if opt == OPT_GO else 'INFO'} {name!r}"
                try:
                    t, _ = c.go(name, opt=opt)
                except Closed:
                    check(b"\0" in name, f"{what}: server hung up instead of answering an error")
                    print(f"    ({what}: server closes)")
                    c.close()
                    c = RawNBD(srv.nbd_sock)
                    c.handshake()
                    continue
                check(t in (REP_ERR_UNKNOWN, REP_ERR_INVALID),
                      f"{what}: {rep_name(t)}, want ERR_UNKNOWN or ERR_INVALID")
        same_conn_ok(c)
    finally:
        c.close()
    for name in (b"../vm1", b"vm1\0x", b"a/b"):
        with RawNBD(srv.nbd_sock) as c:
            c.handshake()
            try:
                c.export_name(name)
                raise AssertionError(f"EXPORT_NAME {name!r} was accepted")
            except Closed:
                pass


def c_missing_snapshot():
    # Snapshots are a later issue: "VOL@SNAP" of a snapshot that does not
    # exist is ERR_UNKNOWN, today and later.
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        t, _ = c.go("vm1@nosuch")
        check(t == REP_ERR_UNKNOWN, f"GO vm1@nosuch: {rep_name(t)}, want ERR_UNKNOWN")
        t, _ = c.go("nosuch")
        check(t == REP_ERR_UNKNOWN, f"GO nosuch: {rep_name(t)}, want ERR_UNKNOWN")
        same_conn_ok(c)


def c_empty_export_name():
    # "" is the default export: serving vm1 or refusing are both fine.
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        t, info = c.go(b"")
        check(t in (REP_ACK, REP_ERR_UNKNOWN, REP_ERR_INVALID), f"GO '': {rep_name(t)}")
        print(f"    (GO '' -> {rep_name(t)})")
        if t != REP_ACK:
            same_conn_ok(c)


def c_meta_context_before_structured():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        r = c.set_meta(b"vm1", [b"base:allocation"])
        check(r[-1][0] == REP_ERR_INVALID,
              f"SET_META_CONTEXT before STRUCTURED_REPLY: {rep_name(r[-1][0])}")
        same_conn_ok(c)


def c_meta_context_malformed():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.negotiate_structured()
        # 3 queries announced, 1 present
        data = struct.pack(">I", 3) + b"vm1" + struct.pack(">II", 3, 15) + b"base:allocation"
        expect_opt_error(c, OPT_SET_META_CONTEXT, data, {REP_ERR_INVALID},
                         "SET_META_CONTEXT with missing queries")
        # query length past the end
        data = struct.pack(">I", 3) + b"vm1" + struct.pack(">II", 1, 1000) + b"base:"
        expect_opt_error(c, OPT_LIST_META_CONTEXT, data, {REP_ERR_INVALID},
                         "LIST_META_CONTEXT with query length past the option")
        # unknown export: the protocol does not say; an answer, and no hang-up
        r = c.set_meta(b"nosuch", [b"base:allocation"])
        print(f"    (SET_META_CONTEXT on an unknown export: {[rep_name(t) for t, _ in r]})")
        # unknown context: not an error, just nothing selected
        r = c.set_meta(b"vm1", [b"x-nosuch:thing"])
        check(r[-1][0] == REP_ACK and len(r) == 1,
              f"SET_META_CONTEXT x-nosuch:thing: {[rep_name(t) for t, _ in r]}, want just ACK")
        # and the real one works
        r = c.set_meta(b"vm1", [b"base:allocation"])
        check([t for t, _ in r] == [REP_META_CONTEXT, REP_ACK],
              f"SET_META_CONTEXT base:allocation: {[rep_name(t) for t, _ in r]}")
        same_conn_ok(c)


def c_abort():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        try:
            t = c.final(OPT_ABORT)
            check(t == REP_ACK, f"ABORT answered {rep_name(t)}")
        except Closed:
            pass
        expect_closed(c, "after ABORT")


def c_info_reply_sane():
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        t, info = c.go("vm1", infos=(INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_NAME), opt=OPT_INFO)
        check(t == REP_ACK, f"INFO vm1: {rep_name(t)}")
        check(info["size"] == SIZE, f"INFO size {info['size']}")
        check(info["flags"] & TF_HAS_FLAGS, "HAS_FLAGS missing")
        check(not info["flags"] & TF_READ_ONLY, "vm1 advertised read-only")
        check(not info["flags"] & TF_SEND_DF, "SEND_DF advertised without structured replies")
        check("block" in info, "no NBD_INFO_BLOCK_SIZE although requested")
        mn, pref, mx = info["block"]
        check(mn >= 1 and mn & (mn - 1) == 0 and mn <= 65536, f"minimum block size {mn}")
        check(pref >= max(mn, 512) and pref & (pref - 1) == 0, f"preferred block size {pref}")
        check(mx >= pref and mx % mn == 0 and mx <= 32 * MiB, f"maximum block size {mx}")
        check(info.get("description"), "no NBD_INFO_DESCRIPTION although requested")
        same_conn_ok(c)


# ======================= transmission cases =======================

def conn(structured=True, meta=()):
    c = RawNBD(srv.nbd_sock)
    c.connect_export("vm1", structured=structured, meta=meta)
    return c


def expect_cmd_error(c, cmd, off, length, allowed, what, flags=0, payload=None):
    err, _ = c.cmd(cmd, off, length, flags, payload)
    check(err in allowed, f"{what}: got {errno_name(err)}, want "
                          f"{' or '.join(errno_name(a) for a in allowed)}")
    return err


def c_bad_request_magic():
    for structured in (False, True):
        with conn(structured) as c:
            c.send(struct.pack(">IHHQQI", 0x25609514, 0, CMD_READ, 1, 0, 4096))
            expect_closed(c, "request with wrong magic")


def c_unknown_command():
    for structured in (False, True):
        with conn(structured) as c:
            for t in (8, 99, 0xFFFF):
                expect_cmd_error(c, t, 0, 0, {EINVAL}, f"unknown command {t}")
                expect_cmd_error(c, t, 0, 4096, {EINVAL}, f"unknown command {t} with length")
            check(c.read(0, 4096) == ref["head"], "READ after unknown commands")


def c_unknown_flags():
    with conn(structured=False) as c:
        expect_cmd_error(c, CMD_READ, 0, 4096, {EINVAL}, "READ with flag 0x8000", flags=0x8000)
        expect_cmd_error(c, CMD_READ, 0, 4096, {EINVAL},
                         "READ with DF without structured replies", flags=CMD_FLAG_DF)
        expect_cmd_error(c, CMD_WRITE, 0, 4096, {EINVAL}, "WRITE with flag 0x8000",
                         flags=0x8000, payload=smuggled_payload(4096))
        check(c.read(0, 4096) == ref["head"], "READ after bad flags")
    with conn(structured=True) as c:
        expect_cmd_error(c, CMD_READ, 0, 4096, {EINVAL}, "READ with flag 0x4000", flags=0x4000)
        expect_cmd_error(c, CMD_TRIM, 0, 4096, {EINVAL}, "TRIM with flag 0x8000", flags=0x8000)
        check(c.read(0, 4096) == ref["head"], "READ after bad flags")


def c_past_end():
    for structured in (False, True):
        with conn(structured) as c:
            for off, n in ((SIZE - 512, 1024), (SIZE, 512), (SIZE + 4096, 4096),
                           (2**63, 4096), (2**64 - 512, 1024), (2**64 - 1, 1)):
                w = f"at {off:#x}+{n} (size {SIZE:#x})"
                expect_cmd_error(c, CMD_READ, off, n, {EINVAL}, "READ " + w)
                expect_cmd_error(c, CMD_WRITE, off, n, {ENOSPC, EINVAL}, "WRITE " + w,
                                 payload=smuggled_payload(n))
                expect_cmd_error(c, CMD_TRIM, off, n, {EINVAL}, "TRIM " + w)
                expect_cmd_error(c, CMD_WRITE_ZEROES, off, n, {ENOSPC, EINVAL}, "WRITE_ZEROES " + w)
                expect_cmd_error(c, CMD_CACHE, off, n, {EINVAL}, "CACHE " + w)
            check(c.read(0, 4096) == ref["head"], "READ after out-of-range requests")


def c_block_status_bad():
    with conn(structured=True) as c:
        # no meta context negotiated
        expect_cmd_error(c, CMD_BLOCK_STATUS, 0, 4096, {EINVAL},
                         "BLOCK_STATUS without a meta context")
        check(c.read(0, 4096) == ref["head"], "READ after BLOCK_STATUS error")
    with conn(structured=True, meta=[b"base:allocation"]) as c:
        expect_cmd_error(c, CMD_BLOCK_STATUS, SIZE - 512, 1024, {EINVAL}, "BLOCK_STATUS past end")
        expect_cmd_error(c, CMD_BLOCK_STATUS, 2**64 - 512, 1024, {EINVAL},
                         "BLOCK_STATUS with offset+length overflowing")
        err, chunks = c.cmd(CMD_BLOCK_STATUS, 0, SIZE)
        check(err == 0, f"BLOCK_STATUS of the whole volume: {errno_name(err)}")
        check(c.read(0, 4096) == ref["head"], "READ after BLOCK_STATUS errors")


def c_too_big():
    for structured in (False, True):
        with conn(structured) as c:
            # 32 MiB exactly is the limit and must work (write back what is there).
            data = c.read(0, 32 * MiB)
            check(data[:4096] == ref["head"], "32 MiB READ: wrong data")
            err, _ = c.cmd(CMD_WRITE, 0, 32 * MiB, payload=data)
            check(err == 0, f"32 MiB WRITE: {errno_name(err)}")
            for n in (32 * MiB + 512, 64 * MiB):
                expect_cmd_error(c, CMD_READ, 0, n, {EINVAL, EOVERFLOW}, f"READ of {n} bytes")
            check(c.read(0, 4096) == ref["head"], "READ after too-big READs")
    # A too-big WRITE, payload sent in full: EINVAL and the payload skipped,
    # or a hard disconnect (allowed above 32 MiB).  Never executed.
    for n in (32 * MiB + 512, 64 * MiB):
        with conn(True) as c:
            h = c.request(CMD_WRITE, 0, n)
            t, box = c.send_in_thread(smuggled_payload(n))
            try:
                rh, err, _, _ = c.reply()
            except Closed:
                print(f"    ({n}-byte WRITE: server closes)")
                continue
            check(rh == h, "reply to a too-big WRITE has the wrong handle")
            check(err in (EINVAL, EOVERFLOW), f"WRITE of {n} bytes: {errno_name(err)}")
            t.join(20)
            check(not t.is_alive(), f"{n}-byte WRITE payload: server stopped reading it")
            if "error" not in box:
                try:
                    check(c.read(0, 4096) == ref["head"], "READ after a too-big WRITE")
                except Closed:
                    pass  # closing after the reply is allowed


def c_huge_write_length_no_payload():
    with conn(True) as c:
        c.request(CMD_WRITE, 0, 0xFFFFFFFF)
        c.s.settimeout(5)
        try:
            _, err, _, _ = c.reply()
            check(err != 0, "4 GiB WRITE header answered with success")
            print(f"    (4 GiB WRITE header: {errno_name(err)})")
        except Closed:
            print("    (4 GiB WRITE header: server closes)")
        except Timeout:
            raise AssertionError("WRITE with length 0xffffffff: no reply and no disconnect "
                                 "within 5 s")


def c_zero_length():
    # Unspecified by the protocol: success or EINVAL, but an answer, and
    # the connection goes on.
    with conn(True) as c:
        for cmd in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE):
            err, _ = c.cmd(cmd, 4096, 0)
            ok = (0, EINVAL, ENOSPC) if cmd in (CMD_WRITE, CMD_WRITE_ZEROES) else (0, EINVAL)
            check(err in ok, f"zero-length command {cmd}: {errno_name(err)}")
        err, _ = c.cmd(CMD_FLUSH, 4096, 4096)
        check(err in (0, EINVAL), f"FLUSH with offset/length set: {errno_name(err)}")
        check(c.read(0, 4096) == ref["head"], "READ after zero-length requests")


def c_structured_error_framing():
    # READ errors with structured replies: one error chunk, no data chunk.
    with conn(True) as c:
        h = c.request(CMD_READ, SIZE - 512, 1024)
        rh, err, _, chunks = c.reply()
        check(rh == h and err == EINVAL, f"READ past end: {errno_name(err)}")
        types = [t for t, _ in chunks]
        check(not any(t in (RT_OFFSET_DATA, RT_OFFSET_HOLE) for t in types),
              f"data chunks in an error reply: {types}")


def c_disc_answers_pending():
    with conn(False) as c:
        h = c.request(CMD_READ, 0, 4096)
        c.request(CMD_DISC, 0, 0)
        rh, err, data, _ = c.reply()
        check(rh == h and err == 0, f"READ before DISC: handle {rh}/{h}, {errno_name(err)}")
        check(data == ref["head"], "READ before DISC: wrong data")
        expect_closed(c, "after DISC")


def c_vanish_mid_write():
    with conn(True) as c:
        c.request(CMD_WRITE, 0, 65536)
        c.send(b"VANISH" * 100)   # 600 of 65536 bytes
        c.close()
    time.sleep(0.5)
    with conn(False) as c:
        c.request(CMD_WRITE, 8192, 1 << 20)
        c.send(b"\xee" * 5000)
        c.s.shutdown(socket.SHUT_WR)
        check(c.closed_by_server(5), "server kept a half-closed connection mid-payload")
    time.sleep(0.2)


def c_vanish_mid_handshake():
    for stage in range(4):
        c = RawNBD(srv.nbd_sock)
        if stage >= 1:
            c.greeting()
        if stage == 2:
            c.send(b"\0\0")
        if stage == 3:
            c.send(struct.pack(">I", 1) + struct.pack(">QI", IHAVEOPT, OPT_GO))
        c.close()
    time.sleep(0.3)


def c_vanish_with_requests_in_flight():
    # Many replies pending when the client goes: the server gets EPIPE /
    # ECONNRESET writing them, and must just drop the connection (all of
    # its threads: after_case checks that the connections are gone).
    for k in range(20):
        c = conn(bool(k % 2))
        for i in range(64):
            c.request(CMD_READ, (i % 32) * MiB, MiB)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()   # RST
    c = conn(True)
    for i in range(16):
        c.request(CMD_READ, i * MiB, MiB)
    c.close()
    time.sleep(1)


def c_many_connections():
    cs = []
    try:
        for _ in range(64):
            cs.append(conn(True))
        for i, c in enumerate(cs):
            c.request(CMD_READ, 0, 4096)
        for c in cs:
            _, err, _, _ = c.reply()
            check(err == 0, "READ on one of 64 connections")
    finally:
        for c in cs:
            c.close()


def c_structured_read_shapes():
    # Not bad input, but the replies every case above relies on: a read over
    # data and hole reassembles exactly; with DF it is one content chunk.
    with conn(True) as c:
        for off, n in ((3 * MiB, 2 * MiB), (10 * MiB, MiB), (60 * MiB - 1000, MiB + 2000),
                       (SIZE - 5000, 5000), (1, 4095)):
            _, data = c.cmd(CMD_READ, off, n)
            check(data == bystander.pread(n, off), f"structured READ {off}+{n}: wrong data")
        if c.export["flags"] & TF_SEND_DF:
            off, n = 4 * MiB - 32768, 65536     # half data, half hole
            c.request(CMD_READ, off, n, CMD_FLAG_DF)
            _, err, _, chunks = c.reply()
            check(err == 0, f"READ with DF: {errno_name(err)}")
            content = [(t, p) for t, p in chunks if t in (RT_OFFSET_DATA, RT_OFFSET_HOLE)]
            check(len(content) == 1 and content[0][0] == RT_OFFSET_DATA,
                  f"READ with DF over data and hole: chunks {[t for t, _ in chunks]}, "
                  f"want exactly one OFFSET_DATA")
            check(content[0][1][8:] == bystander.pread(n, off), "READ with DF: wrong data")


def c_block_status_shapes():
    with conn(True, meta=[b"base:allocation"]) as c:
        cid = c.meta_ids.get("base:allocation")
        check(cid is not None, f"no id for base:allocation: {c.meta_ids}")
        for off, n, flags in ((0, SIZE, 0), (1000, 5000, 0), (4 * MiB - 512, 8192, 0),
                              (0, SIZE, CMD_FLAG_REQ_ONE), (SIZE - 1, 1, 0)):
            c.request(CMD_BLOCK_STATUS, off, n, flags)
            _, err, _, chunks = c.reply()
            check(err == 0, f"BLOCK_STATUS {off}+{n}: {errno_name(err)}")
            bs = [p for t, p in chunks if t == RT_BLOCK_STATUS]
            check(len(bs) == 1, f"BLOCK_STATUS {off}+{n}: {len(bs)} status chunks, want 1")
            p = bs[0]
            check(len(p) >= 12 and (len(p) - 4) % 8 == 0, f"status chunk of {len(p)} bytes")
            (rid,) = struct.unpack(">I", p[:4])
            check(rid == cid, f"status chunk for context {rid}, negotiated {cid}")
            ext = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
            check(all(e[0] > 0 for e in ext), f"zero-length extent in {ext[:5]}")
            check(sum(e[0] for e in ext) <= n, f"extents sum past the request: {ext[:5]}")
            if flags & CMD_FLAG_REQ_ONE:
                check(len(ext) == 1, f"REQ_ONE answered with {len(ext)} extents")
            if off == 0 and not flags:
                # The raw file says where the first data ends (earlier cases
                # rewrote some of it, which allocates).
                fd = os.open(pool.origin("vm1"), os.O_RDONLY)
                try:
                    hole = os.lseek(fd, 0, os.SEEK_HOLE)
                finally:
                    os.close(fd)
                check(ext[0] == (hole, 0), f"first extent {ext[0]}, want ({hole}, 0: data)")
                check(ext[1][1] == 3, f"second extent {ext[1]}, want a hole (3)")


def c_slow_reader():
    # A client that sends 2000 reads (125 MiB of replies) and reads none of
    # them for a while: its replies back up (and the server stops reading
    # its requests), and nobody else may notice.
    with conn(True) as c:
        n = 2000
        data = b"".join(c.prepare(CMD_READ, (i % 512) * 65536, 65536)[1] for i in range(n))
        t, box = c.send_in_thread(data)
        time.sleep(1)
        h = nbd.NBD()
        h.connect_uri(srv.uri("vm1"))
        t0 = time.time()
        check(h.pread(4096, 0) == ref["head"], "read while another client is not reading")
        h.shutdown()
        check(time.time() - t0 < 5, "a new client waited for a slow reader")
        check(bystander.pread(4096, 0) == ref["head"], "bystander during a slow reader")
        seen = set()
        for _ in range(n):
            rh, err, data, _ = c.reply()
            check(err == 0, f"READ {rh}: {errno_name(err)}")
            check(rh not in seen, f"two replies for handle {rh}")
            seen.add(rh)
            if ((rh - 1) % 512) == 0:
                check(data[:4096] == ref["head"], "slow reader: wrong data at 0")
        check(len(seen) == n, f"{len(seen)} replies for {n} requests")
        t.join(10)
        check("error" not in box, f"sending failed: {box.get('error')}")


def c_pipelined_mixed():
    # 256 requests in flight on one connection: writes to one region, reads
    # of another (data and holes), flushes, block status; every reply
    # matched to its request, every read's data right.
    with conn(True, meta=[b"base:allocation"]) as c:
        expect = {}
        scratch = 100 * MiB            # vm1's hole region: write there, restore after
        pats = [os.urandom(4096 * (1 + i % 4)) for i in range(64)]
        reqs = {}
        out = []
        for i in range(256):
            k = i % 4
            if k == 0:
                off = scratch + (i // 4) * 16384
                p = pats[(i // 4) % 64]
                h, b = c.prepare(CMD_WRITE, off, len(p), payload=p)
                reqs[h] = ("w", off, p)
            elif k == 1:
                off = (i * 7919 * 512) % (8 * MiB)
                h, b = c.prepare(CMD_READ, off, 8192)
                reqs[h] = ("r", off, 8192)
            elif k == 2:
                h, b = c.prepare(CMD_FLUSH, 0, 0)
                reqs[h] = ("f", 0, 0)
            else:
                h, b = c.prepare(CMD_BLOCK_STATUS, 0, 8 * MiB)
                reqs[h] = ("b", 0, 0)
            out.append(b)
        t, box = c.send_in_thread(b"".join(out))
        for _ in range(256):
            rh, err, data, _ = c.reply()
            kind, off, x = reqs.pop(rh)
            check(err == 0, f"pipelined {kind} at {off}: {errno_name(err)}")
            if kind == "r":
                check(data == bystander.pread(x, off), f"pipelined read at {off}: wrong data")
            if kind == "w":
                expect[off] = x
        t.join(10)
        for off, p in expect.items():
            check(c.read(off, len(p)) == p, f"pipelined write at {off} not there")
        err, _ = c.cmd(CMD_TRIM, scratch, 2 * MiB)   # back to a hole, as it was
        check(err == 0, f"TRIM of the scratch region: {errno_name(err)}")
        check(c.read(scratch, 65536) == bytes(65536), "scratch region not zero after TRIM")


# ======================= other servers =======================

def c_unaligned_min_block_size():
    p2 = Pool()
    try:
        p2.create("vm1", 4 * MiB)
        s2 = p2.serve("--min-block-size", "512")
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri(s2.uri("vm1"))
        check(h.get_block_size(nbd.SIZE_MINIMUM) == 512,
              f"advertised minimum block size {h.get_block_size(nbd.SIZE_MINIMUM)}, want 512")
        h.pwrite(b"\xab" * 4096, 0)
        h.flush()
        before = p2.sha("vm1")
        bad = [("pread(100, 0)", lambda: h.pread(100, 0)),
               ("pread(512, 100)", lambda: h.pread(512, 100)),
               ("pread(1000, 512)", lambda: h.pread(1000, 512)),
               ("pwrite(100 bytes, 0)", lambda: h.pwrite(b"x" * 100, 0)),
               ("pwrite(512 bytes, 256)", lambda: h.pwrite(b"x" * 512, 256)),
               ("trim(100, 512)", lambda: h.trim(100, 512)),
               ("zero(512, 1)", lambda: h.zero(512, 1)),
               ("cache(1, 0)", lambda: h.cache(1, 0) if h.can_cache() else h.pread(1, 0))]
        for what, fn in bad:
            try:
                fn()
                raise AssertionError(f"unaligned {what} succeeded with minimum block size 512")
            except nbd.Error as e:
                check(e.errnum == 22, f"unaligned {what}: {e.errno} ({e.string}), want EINVAL")
        check(h.pread(512, 512) == b"\xab" * 512, "aligned read on the same connection")
        h.shutdown()
        check(p2.sha("vm1") == before, "unaligned requests changed the volume")
        # A raw client that does not ask for block sizes: the server may
        # insist (ERR_BLOCK_SIZE_REQD) or serve it; record which.
        with RawNBD(s2.nbd_sock) as c:
            c.handshake()
            t, _ = c.go("vm1", infos=())
            check(t in (REP_ACK, REP_ERR_BLOCK_SIZE_REQD), f"GO without block-size request: "
                                                          f"{rep_name(t)}")
            print(f"    (GO without asking for block sizes: {rep_name(t)})")
        check(s2.alive(), "--min-block-size server died")
        s2.stop()
    finally:
        p2.cleanup()


def c_read_only_export():
    r = pool.cli("snapshot", "create", "vm1@ro", check=False)
    if r.returncode != 0:
        raise Skip("no read-only export to test yet ('snapshot create vm1@ro' failed: "
                   f"{((r.stderr or r.stdout).strip().splitlines() or [''])[0]})")
    global tree
    tree = pool_tree()   # the snapshot may have added files
    with RawNBD(srv.nbd_sock) as c:
        c.handshake()
        c.negotiate_structured()
        t, info = c.go("vm1@ro")
        check(t == REP_ACK, f"GO vm1@ro: {rep_name(t)}")
        check(info["flags"] & TF_READ_ONLY, "snapshot export not flagged READ_ONLY")
        expect_cmd_error(c, CMD_WRITE, 0, 4096, {EPERM}, "WRITE to a read-only export",
                         payload=smuggled_payload(4096))
        expect_cmd_error(c, CMD_WRITE_ZEROES, 0, 4096, {EPERM}, "WRITE_ZEROES to a read-only export")
        check(c.read(0, 4096) == ref["head"], "READ of the snapshot")
        # TRIM is the one write-like command a snapshot export takes: it
        # releases the range (it reads as zeros from then on)
        check(info["flags"] & TF_SEND_TRIM, "snapshot export does not advertise TRIM")
        expect_cmd_error(c, CMD_TRIM, 60 * MiB, 4096, {0}, "TRIM (release) of a snapshot range")
        check(c.read(60 * MiB, 4096) == bytes(4096), "a released range reads as zeros")
        check(c.read(0, 4096) == ref["head"], "the rest of the snapshot is unchanged")
    tree = pool_tree()   # the release is recorded (released.meta)


# ======================= main =======================

def main():
    global srv, tree, bystander
    pool.create("vm1", SIZE)
    pool.create("vm2", SIZE2)
    srv = pool.serve()
    h = nbd.NBD()
    h.connect_uri(srv.uri("vm1"))
    h.pwrite(os.urandom(4 * MiB), 0)
    h.pwrite(os.urandom(MiB), 60 * MiB)
    h.pwrite(os.urandom(MiB), SIZE - MiB)
    h.flush()
    ref["head"] = h.pread(4096, 0)
    ref["tail"] = h.pread(4096, SIZE - 4096)
    h.shutdown()
    h2 = nbd.NBD()
    h2.connect_uri(srv.uri("vm2"))
    h2.pwrite(b"\x22" * SIZE2, 0)
    h2.shutdown()
    for v in ("vm1", "vm2"):
        expect_sha[v] = pool.sha(v)
        expect_sizes[v] = os.path.getsize(pool.origin(v))
    tree = pool_tree()
    bystander = nbd.NBD()
    bystander.connect_uri(srv.uri("vm1"))

    for name, fn in [(n, f) for n, f in globals().items() if n.startswith("c_")]:
        case(name[2:], fn)

    bystander.shutdown()
    runner.case("server stops cleanly", srv.stop)
    return runner.finish()


if __name__ == "__main__":
    try:
        rc = main()
    except Exception:
        traceback.print_exc()
        if srv:
            print(srv.log_tail(), file=sys.stderr)
        rc = 1
    finally:
        pool.cleanup()
    sys.exit(rc)
