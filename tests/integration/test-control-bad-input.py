#!/usr/bin/python3
"""test-control-bad-input.py: hostile input on the control socket.

The CLI checks names and sizes before it sends them, so here a raw client
speaks the control protocol (one JSON object per line, ctl/ctl.h) and sends
what the CLI never would: lines that are not JSON, not objects, nested a
million deep, over the 1 MiB line limit, with NUL bytes or broken UTF-8;
requests with unknown commands, unknown keys, wrong argument types; and
create/delete/info with every bad volume name and size.  Each must get an
{"error": {...}} reply (class, errno, desc) on a connection that stays
usable, except the over-long line, which is answered and closed.  "id" is
echoed whatever its type.  Nothing in the pool may change, and the server
must keep serving NBD and control clients.
"""

import json
import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

MiB = 1 << 20


class Ctl:
    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.greeting = self.read()

    def close(self):
        self.s.close()

    def read(self):
        while b"\n" not in self.buf:
            try:
                b = self.s.recv(1 << 20)
            except socket.timeout:
                raise Timeout("no reply line within the timeout")
            except ConnectionResetError:
                raise Closed("reset")
            if not b:
                raise Closed("EOF")
            self.buf += b
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, data):
        self.s.sendall(data)

    def call(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")
        return self.read()

    def closed(self, timeout=5):
        """True if the server closes within timeout (data before is dropped)."""
        self.s.settimeout(timeout)
        try:
            while self.s.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def is_error(r, what):
    check(isinstance(r, dict) and "error" in r and "return" not in r,
          f"{what}: not an error reply: {r}")
    e = r["error"]
    check(isinstance(e, dict) and isinstance(e.get("desc"), str) and e["desc"],
          f"{what}: error without a description: {r}")
    check("class" in e, f"{what}: error without a class: {r}")
    return e


def usable(c, what):
    r = c.call({"execute": "list"})
    check("return" in r, f"after {what}: list failed on the same connection: {r}")
    names = sorted(v["name"] for v in r["return"]["volumes"])
    check(names == ["vm1"], f"after {what}: volumes are {names}")


def main():
    pool = Pool()
    runner = Runner()
    try:
        pool.create("vm1", 4 * MiB)
        srv = pool.serve()
        sock = srv.ctl_sock
        tree0 = sorted(os.listdir(pool.path)) + sorted(os.listdir(os.path.join(pool.path, "volumes")))
        sha0 = pool.sha("vm1")

        def greeting():
            c = Ctl(sock)
            check(isinstance(c.greeting, dict) and "snapvol" in c.greeting,
                  f"greeting: {c.greeting}")
            usable(c, "greeting")
            c.close()
        runner.case("greeting, then a command", greeting)

        def not_requests():
            c = Ctl(sock)
            bad = [b"hello", b"{", b"}", b"[1,2]", b'"execute"', b"42", b"null", b"true",
                   b"{'execute': 'list'}", b'{"execute": "list",}', b"\x00", b'{"a":"\x00"}',
                   b'{"execute": "li\xffst"}', b'{"execute": "list"} trailing',
                   b"[" * 200000 + b"]" * 200000, b'{"a":' * 100000 + b"1" + b"}" * 100000,
                   b'{"execute": "list", "arguments": {"x": 1e400}}']
            for line in bad:
                c.send_raw(line + b"\n")
                is_error(c.read(), f"line {line[:40]!r}")
            # Blank lines are skipped silently (as QMP does); the next
            # request is answered as usual.
            c.send_raw(b"\n \n\r\n\t\n")
            usable(c, "lines that are not requests")
            c.close()
        runner.case("lines that are not JSON requests", not_requests)

        def malformed_requests():
            c = Ctl(sock)
            for req in [{}, {"execute": 42}, {"execute": None}, {"execute": ["list"]},
                        {"execute": ""}, {"execute": "nosuch"}, {"execute": "list\n"},
                        {"execute": "list", "arguments": []},
                        {"execute": "list", "arguments": "x"},
                        {"execute": "list", "bogus": 1},
                        {"execute": "info"}, {"execute": "info", "arguments": {"name": 5}},
                        {"execute": "info", "arguments": {"name": "vm1", "bogus": 1}},
                        {"execute": "create", "arguments": {"name": "x"}},
                        {"execute": "create", "arguments": {"size": 4096}},
                        {"execute": "delete", "arguments": {}}]:
                is_error(c.call(req), f"request {req}")
            usable(c, "malformed requests")
            c.close()
        runner.case("malformed requests", malformed_requests)

        def bad_names():
            c = Ctl(sock)
            names = ["a/b", "..", ".", "x@y", "a\x01b", "a\nb", "", "a" * 65, "../vm1",
                     "/tmp/x", "-x", ".hidden", "a b", "vm1\u0000", "é", "vm1/../vm1",
                     "../../" + "x" * 10]
            for n in names:
                is_error(c.call({"execute": "create", "arguments": {"name": n, "size": 4096}}),
                         f"create {n!r}")
                is_error(c.call({"execute": "delete", "arguments": {"name": n}}), f"delete {n!r}")
                is_error(c.call({"execute": "info", "arguments": {"name": n}}), f"info {n!r}")
            usable(c, "bad names")
            c.close()
        runner.case("bad volume names", bad_names)

        def bad_sizes():
            c = Ctl(sock)
            for size in ["abc", "12X", -1, 0, 513, 1.5, "1.5G", True, None, [], {}, 2**64,
                         2**63, -2**63, "18446744073709551616", "16E", "", " ", "1G1"]:
                is_error(c.call({"execute": "create",
                                 "arguments": {"name": "vbad", "size": size}}),
                         f"create size {size!r}")
            for chunk in [3000, "3K", "2M", 2048, 0.5, -4096, "abc", 2**40, True]:
                is_error(c.call({"execute": "create",
                                 "arguments": {"name": "vbad", "size": 4096, "chunk_size": chunk}}),
                         f"create chunk_size {chunk!r}")
            usable(c, "bad sizes")
            c.close()
        runner.case("bad sizes and chunk sizes", bad_sizes)

        def ids_echoed():
            c = Ctl(sock)
            for i in [1, "abc", {"x": [1, 2]}, None, 1.5, [], "\u00e9\u4e2d", 2**53]:
                r = c.call({"execute": "version", "id": i})
                check("return" in r and r.get("id", "<missing>") == i,
                      f"id {i!r} not echoed: {r}")
                r = c.call({"execute": "nosuch", "id": i})
                check("error" in r and r.get("id", "<missing>") == i,
                      f"id {i!r} not echoed on error: {r}")
            c.close()
        runner.case("id echoed, any type, on success and error", ids_echoed)

        def pipelined_and_fragmented():
            c = Ctl(sock)
            reqs = b"".join(json.dumps({"execute": "version", "id": i}).encode() + b"\n"
                            for i in range(50))
            c.send_raw(reqs)
            got = [c.read().get("id") for _ in range(50)]
            check(got == list(range(50)), f"pipelined replies out of order: {got[:10]}...")
            line = json.dumps({"execute": "list", "id": "frag"}).encode() + b"\n"
            for b in line:
                c.send_raw(bytes([b]))
                time.sleep(0.001)
            r = c.read()
            check(r.get("id") == "frag" and "return" in r, f"byte-by-byte request: {r}")
            c.close()
        runner.case("50 pipelined requests, one sent byte by byte", pipelined_and_fragmented)

        def long_lines():
            # Just under the limit: a valid request with a huge id works.
            c = Ctl(sock, timeout=30)
            big = "x" * (MiB - 100)
            r = c.call({"execute": "version", "id": big})
            check("return" in r and r.get("id") == big, "request of almost 1 MiB failed")
            # Over the limit, no newline: an error reply, then close.
            c.send_raw(b"[" + b"1," * (MiB // 2 + 10))
            e = is_error(c.read(), "line over 1 MiB")
            check(c.closed(5), f"connection not closed after an over-long line ({e})")
            c.close()
        runner.case("1 MiB line limit", long_lines)

        def vanishing_and_many_clients():
            for data in [b"", b'{"execute": "li', b'{"execute": "list"}']:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(data)
                s.close()
            cs = []
            refused = 0
            for _ in range(80):
                try:
                    c = Ctl(sock, timeout=5)
                except Closed:
                    refused += 1
                    continue
                if "error" in c.greeting:
                    is_error(c.greeting, "greeting of a client over the limit")
                    check(c.closed(5), "client over the limit not closed")
                    refused += 1
                cs.append(c)
            for c in cs:
                c.close()
            print(f"    ({len(cs)} control clients at once, {refused} refused)")
            time.sleep(0.5)
            c = Ctl(sock)
            usable(c, "80 clients")
            c.close()
        runner.case("clients that vanish, 80 at once", vanishing_and_many_clients)

        def nothing_changed():
            check(srv.alive(), "server died")
            tree = sorted(os.listdir(pool.path)) + sorted(os.listdir(os.path.join(pool.path,
                                                                                 "volumes")))
            check(tree == tree0, f"pool files changed: {tree0} -> {tree}")
            check(pool.sha("vm1") == sha0, "vm1 changed")
            r = pool.cli("list", "--json")
            check("vm1" in r.stdout, "CLI list after all this")
            try:
                import nbd
                h = nbd.NBD()
                h.connect_uri(srv.uri("vm1"))
                h.pread(4096, 0)
                h.shutdown()
            except ImportError:
                pass
        runner.case("server alive, pool unchanged, NBD and CLI work", nothing_changed)
        runner.case("server stops cleanly", srv.stop)
        return runner.finish()
    finally:
        pool.cleanup()


if __name__ == "__main__":
    sys.exit(main())
