# SPDX-License-Identifier: MIT
# kv_compat: drives a Redis-compatible server with python3-redis's client, as an application
# would, and checks every answer; kv_test runs it against the kv sample.
#
#     python3 test/kv_compat.py PORT        prints "ok" and exits 0, or fails with a traceback
#
# It passes against redis-server 7.0 too: what it checks is Redis's behaviour, not kv's.
import sys
import time

import redis


def check(actual, expected):
    if actual != expected:
        raise AssertionError(f"expected {expected!r}, got {actual!r}")


def check_error(expected_text, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except redis.ResponseError as e:
        check(str(e), expected_text)
        return
    raise AssertionError(f"expected the error {expected_text!r}")


def strings(r):
    check(r.ping(), True)
    check(r.set("k", "v"), True)
    check(r.set("k", "w", get=True), b"v")
    check(r.set("k", "x", nx=True), None)
    check(r.set("new", "x", xx=True), None)
    check(r.set("k", "y", ex=100), True)
    check(r.set("k", "z", keepttl=True), True)
    check(0 < r.ttl("k") <= 100, True)
    check(r.set("k", "v", pxat=99999999999999), True)
    check(r.pexpiretime("k"), 99999999999999)
    check(r.set("k", "v", exat=99999999999), True)
    check(r.expiretime("k"), 99999999999)
    check(r.setnx("nx", "1"), True)
    check(r.setnx("nx", "2"), False)
    check(r.setex("ex", 100, "v"), True)
    check(r.psetex("px", 100000, "v"), True)
    check(0 < r.pttl("px") <= 100000, True)
    check(r.getset("ex", "w"), b"v")
    check(r.ttl("ex"), -1)
    check(r.getdel("ex"), b"w")
    check(r.getdel("ex"), None)
    check(r.getex("px", persist=True), b"v")
    check(r.ttl("px"), -1)
    check(r.getex("px", pxat=99999999999999), b"v")
    check(r.pexpiretime("px"), 99999999999999)
    check(r.append("ap", "ab"), 2)
    check(r.append("ap", "cd"), 4)
    check(r.strlen("ap"), 4)
    check(r.getrange("ap", 1, -2), b"bc")
    check(r.setrange("ap", 6, "Z"), 7)
    check(r.get("ap"), b"abcd\0\0Z")
    check(r.msetnx({"m1": "a", "m2": "b"}), True)
    check(r.msetnx({"m2": "c", "m3": "d"}), False)
    check(r.mget("m1", "m2", "m3"), [b"a", b"b", None])
    check(r.incrby("n", 5), 5)
    check(r.decrby("n", 7), -2)
    check(r.incrbyfloat("f", 1.5), 1.5)
    check(r.incrbyfloat("f", 0.1), 1.6)
    r.set("big", 2**63 - 2)
    check(r.incrby("big", 1), 2**63 - 1)
    check_error("increment or decrement would overflow", r.incrby, "big", 1)
    check_error("value is not an integer or out of range", r.incrby, "ap", 1)
    r.set("huge", "1e4932")
    check_error("increment would produce NaN or Infinity", r.incrbyfloat, "huge", "1e4932")
    check_error("value is not a valid float", r.incrbyfloat, "ap", 1)
    check_error("invalid expire time in 'setex' command", r.setex, "ex", 0, "v")
    check_error("syntax error", r.execute_command, "SET", "k", "v", "EX", "1", "PX", "1")
    check_error("wrong number of arguments for 'ping' command", r.execute_command,
                "PING", "x", "y", "z")


def expiry(r):
    r.set("e", "v")
    check(r.expire("e", 100, xx=True), False)
    check(r.expire("e", 100, gt=True), False)
    check(r.expire("e", 100, nx=True), True)
    check(r.expire("e", 200, lt=True), False)
    check(r.expire("e", 50, lt=True), True)
    check(r.expire("e", 500, gt=True), True)
    check(r.pexpire("e", 600000), True)
    check(r.expireat("e", 99999999999), True)
    check(r.expiretime("e"), 99999999999)
    check(r.pexpireat("e", 99999999999999), True)
    check(r.pexpiretime("e"), 99999999999999)
    check(r.persist("e"), True)
    check(r.persist("e"), False)
    check(r.ttl("e"), -1)
    check(r.expire("e", -1, lt=True), True)
    check(r.exists("e"), 0)
    check(r.ttl("e"), -2)
    r.set("e", "v")
    check(r.expireat("e", 1), True)
    check(r.get("e"), None)
    check_error("NX and XX, GT or LT options at the same time are not compatible",
                r.expire, "e", 1, nx=True, xx=True)
    check_error("GT and LT options at the same time are not compatible",
                r.expire, "e", 1, gt=True, lt=True)
    r.set("e", "v")
    check_error("invalid expire time in 'expire' command", r.expire, "e", 9223370399119966)
    # Wall-clock times: what EXPIRETIME says is the Unix time EXPIRE set.
    before = int(time.time())
    r.expire("e", 1000)
    check(before + 1000 <= r.expiretime("e") <= int(time.time()) + 1001, True)


def keys(r):
    r.flushdb()
    r.mset({"hello": 1, "hallo": 2, "hxllo": 3, "a*b": 4})
    check(sorted(r.keys("h?llo")), [b"hallo", b"hello", b"hxllo"])
    check(sorted(r.keys("h[^e]llo")), [b"hallo", b"hxllo"])
    check(r.keys("a\\*b"), [b"a*b"])
    check(r.type("hello"), b"string")
    check(r.type("nope"), b"none")
    check(r.rename("hello", "bye"), True)
    check(r.renamenx("bye", "hallo"), False)
    check(r.renamenx("bye", "hey"), True)
    check_error("no such key", r.rename, "nope", "x")
    check(r.randomkey() in {b"hey", b"hallo", b"hxllo", b"a*b"}, True)
    check(r.dbsize(), 4)
    check(r.flushdb(), True)
    check(r.randomkey(), None)
    seconds, microseconds = r.time()
    check(abs(seconds - time.time()) < 3600 and 0 <= microseconds < 1000000, True)
    info = r.info()
    check(info["redis_mode"], "standalone")
    check(info["redis_version"].startswith("7."), True)
    check(info["connected_clients"] >= 1, True)
    check(isinstance(info["tcp_port"], int) and info["uptime_in_seconds"] >= 0, True)
    check(set(r.info("clients")) >= {"connected_clients", "blocked_clients"}, True)
    hello = r.execute_command("HELLO", 2)
    fields = dict(zip(hello[::2], hello[1::2]))
    check(fields[b"proto"], 2)
    check(fields[b"server"], b"redis")
    check(r.execute_command("SELECT", 0), True)
    check_error("DB index is out of range", redis.Redis(port=r.connection_pool.connection_kwargs["port"],
                                                         db=20).ping)


def scan(r):
    """Every key that exists for the whole scan is returned, while others come and go."""
    r.flushdb()
    stable = {f"stable:{i}".encode() for i in range(2000)}
    r.mset({k: "v" for k in stable})
    seen = set()
    cursor = 0
    calls = 0
    while True:
        cursor, found = r.scan(cursor, count=10)
        seen.update(found)
        # Churn between calls: new keys, and some of them removed again.
        r.mset({f"churn:{calls}:{j}": "v" for j in range(20)})
        r.delete(*[f"churn:{calls - 1}:{j}" for j in range(0, 20, 2)])
        calls += 1
        if cursor == 0:
            break
    check(stable - seen, set())
    check(calls > 1, True)
    check({k for k in r.scan_iter(match="stable:1*", count=100)},
          {k for k in stable if k.startswith(b"stable:1")})
    check(list(r.scan_iter(_type="list")), [])


def main():
    port = int(sys.argv[1])
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    r.flushall()
    strings(r)
    expiry(r)
    keys(r)
    scan(r)
    with r.pipeline(transaction=False) as p:
        p.set("p", 1).incr("p").get("p")
        check(p.execute(), [True, 2, b"2"])
    print("ok")


if __name__ == "__main__":
    main()
