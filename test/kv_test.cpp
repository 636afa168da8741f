// SPDX-License-Identifier: MIT
// kv: the RESP parser and encoders, then the kv sample as a real process, driven by redis-cli,
// redis-benchmark and raw sockets.
#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <tuple>
#include <unistd.h>
#include <vector>

#include <netloop/netloop.hpp>

#include "../samples/resp.hpp"
#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"
#include "support/serve_helpers.hpp"

// The parser must not allocate for what a peer merely claims; this executable counts the largest
// allocation made while `counting` is on. (ASan brings its own operator new.)
#if defined(__SANITIZE_ADDRESS__)
#define KV_TEST_COUNTS_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KV_TEST_COUNTS_ALLOCATIONS 0
#endif
#endif
#ifndef KV_TEST_COUNTS_ALLOCATIONS
#define KV_TEST_COUNTS_ALLOCATIONS 1
#endif

namespace {
thread_local bool counting = false;
thread_local std::size_t largest_allocation = 0;
}  // namespace

#if KV_TEST_COUNTS_ALLOCATIONS
void* operator new(std::size_t size) {
    if (counting) largest_allocation = std::max(largest_allocation, size);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
// Not inlined, so g++ does not see free() meet operator new and warn.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

using namespace std::chrono_literals;
using namespace std::string_literals;
using netloop::errc;
using netloop::task;
using netloop::test::run_bounded;

namespace {

// What a stream of bytes parses into: the commands, then an error or unfinished bytes.
struct parsed {
    std::vector<std::vector<std::string>> commands;
    std::string error;           // empty unless the stream ended in a protocol error
    std::size_t unfinished = 0;  // bytes of an incomplete request at the end

    bool operator==(const parsed&) const = default;
};

std::vector<std::string> owned(const std::vector<std::string_view>& args) {
    return {args.begin(), args.end()};
}

// Feeds `input` in chunks of `chunk` bytes, parsing only once `wanted` bytes are buffered, and
// dropping consumed bytes: what kv's read loop does.
parsed parse_in_chunks(std::string_view input, std::size_t chunk) {
    parsed out;
    std::string buffer;
    std::size_t wanted = 1;
    resp::progress resume;
    for (std::size_t at = 0; at < input.size(); at += chunk) {
        buffer += input.substr(at, chunk);
        if (buffer.size() < wanted) continue;
        std::size_t done = 0;
        for (;;) {
            auto r = resp::parse(std::string_view(buffer).substr(done), resume);
            resume = r.resume;
            if (r.state == resp::status::incomplete) {
                REQUIRE(r.wanted > buffer.size() - done);
                wanted = r.wanted;
                break;
            }
            if (r.state == resp::status::error) {
                out.error = r.error;
                return out;
            }
            REQUIRE(r.consumed > 0);
            done += r.consumed;
            if (!r.args.empty()) out.commands.push_back(owned(r.args));
        }
        buffer.erase(0, done);
    }
    out.unfinished = buffer.size();
    return out;
}

parsed parse_all(std::string_view input) { return parse_in_chunks(input, input.size() + 1); }

std::string command(const std::vector<std::string_view>& args) {
    std::string out;
    resp::append_command(out, args);
    return out;
}

// Bad input: what the parser says, and what kv answers before it closes the connection.
struct bad_input {
    std::string name;
    std::string bytes;
    std::string parse_error;  // empty: the bytes are an unfinished request
    std::string reply;        // kv's reply, once the client has closed its side
};

std::vector<bad_input> bad_inputs() {
    const std::string eof = "-ERR Protocol error: unexpected end of input\r\n";
    auto error = [](const std::string& message) {
        return "-ERR Protocol error: " + message + "\r\n";
    };
    return {
        {"truncated count", "*2", "", eof},
        {"truncated header", "*2\r\n$3\r\nGE", "", eof},
        {"truncated bulk", "*2\r\n$3\r\nGET\r\n$5\r\nab", "", eof},
        {"truncated inline", "GET a", "", eof},
        {"null bulk", "*1\r\n$-1\r\n", "invalid bulk length", error("invalid bulk length")},
        {"negative length", "*1\r\n$-5\r\nab\r\n", "invalid bulk length",
         error("invalid bulk length")},
        {"huge length", "*1\r\n$999999999999\r\n", "invalid bulk length",
         error("invalid bulk length")},
        {"one past 512 MiB", "*1\r\n$536870913\r\n", "invalid bulk length",
         error("invalid bulk length")},
        {"one past INT_MAX arguments", "*2147483648\r\n", "invalid multibulk length",
         error("invalid multibulk length")},
        {"unbalanced quotes", "set \"\"\"test-key\"\"\" test-value\r\nping\r\n",
         "unbalanced quotes in request", error("unbalanced quotes in request")},
        {"unterminated quote", "SET \"a\r\n", "unbalanced quotes in request",
         error("unbalanced quotes in request")},
        {"text after a closing quote", "SET 'a'b c\r\n", "unbalanced quotes in request",
         error("unbalanced quotes in request")},
        {"count overflows", "*99999999999999999999999\r\n", "invalid multibulk length",
         error("invalid multibulk length")},
        {"leading zero", "*01\r\n$1\r\na\r\n", "invalid multibulk length",
         error("invalid multibulk length")},
        {"plus sign", "*1\r\n$+1\r\na\r\n", "invalid bulk length", error("invalid bulk length")},
        {"missing $", "*2\r\n$3\r\nGET\r\n\r\n", "expected '$', got '\r'",
         error("expected '$', got ' '")},
        {"bulk without CRLF", "*1\r\n$3\r\nabcXY", "bulk data not followed by CRLF",
         error("bulk data not followed by CRLF")},
        {"CR without LF", "*1\rX", "invalid multibulk length", error("invalid multibulk length")},
        {"binary garbage", "*\x00\xff\xfe\x80\x01garbage\r\n"s, "invalid multibulk length",
         error("invalid multibulk length")},
        {"1 MiB of *", std::string(1 << 20, '*'), "too big mbulk count string",
         error("too big mbulk count string")},
        {"1 MiB inline", std::string(1 << 20, 'a'), "too big inline request",
         error("too big inline request")},
        {"long bulk length", "*1\r\n$" + std::string(70000, '9'), "too big bulk count string",
         error("too big bulk count string")},
    };
}

}  // namespace

TEST_CASE("resp::parse reads one multibulk command and says how many bytes it took", "[kv][resp]") {
    std::string in = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nv2\r\n*1\r\n";
    auto r = resp::parse(in);
    REQUIRE(r.state == resp::status::complete);
    CHECK(owned(r.args) == std::vector<std::string>{"SET", "k", "v\r\nv2"});
    CHECK(r.consumed == in.size() - 4);
    CHECK(r.args[2].data() == in.data() + 24);  // a view into the input, not a copy
}

TEST_CASE("resp::parse is incomplete at every split of a command and never completes early",
          "[kv][resp]") {
    std::string in = command({"MSET", "a", "", "b", std::string_view("\0\r\n$*", 5)});
    auto whole = resp::parse(in);
    REQUIRE(whole.state == resp::status::complete);
    REQUIRE(whole.consumed == in.size());
    for (std::size_t n = 0; n < in.size(); ++n) {
        CAPTURE(n);
        auto r = resp::parse(std::string_view(in).substr(0, n));
        REQUIRE(r.state == resp::status::incomplete);
        CHECK(r.wanted > n);
        CHECK(r.wanted <= in.size());
    }
}

TEST_CASE("resp::parse fed one byte at a time finds the commands it finds in one buffer",
          "[kv][resp]") {
    std::string in;
    for (int i = 0; i < 50; ++i) {
        in += command({"SET", "key:" + std::to_string(i), std::string(i * 7, 'x')});
        in += "GET key:" + std::to_string(i) + (i % 2 ? "\r\n" : "\n");
    }
    auto whole = parse_all(in);
    CHECK(whole.commands.size() == 100);
    CHECK(whole.error.empty());
    CHECK(whole.unfinished == 0);
    for (std::size_t chunk : {1, 2, 3, 7, 64, 1000}) {
        CAPTURE(chunk);
        CHECK(parse_in_chunks(in, chunk) == whole);
    }
}

TEST_CASE("resp::parse reads many pipelined commands from one buffer in order", "[kv][resp]") {
    std::string in;
    for (int i = 0; i < 1000; ++i) in += command({"INCR", "n" + std::to_string(i)});
    in += "*0\r\n";  // skipped, as Redis does
    in += command({"PING"});
    auto all = parse_all(in);
    REQUIRE(all.commands.size() == 1001);
    CHECK(all.commands[0] == std::vector<std::string>{"INCR", "n0"});
    CHECK(all.commands[999] == std::vector<std::string>{"INCR", "n999"});
    CHECK(all.commands[1000] == std::vector<std::string>{"PING"});
    CHECK(all.unfinished == 0);
}

TEST_CASE("resp::parse reads inline commands, with or without CR, and skips blank lines",
          "[kv][resp]") {
    auto all = parse_all("PING\r\n\r\n  \t \nSET  k\tv\nECHO x\r\nGET");
    CHECK(all.commands ==
          std::vector<std::vector<std::string>>{{"PING"}, {"SET", "k", "v"}, {"ECHO", "x"}});
    CHECK(all.unfinished == 3);
    auto blank = resp::parse("\r\n");
    CHECK(blank.state == resp::status::complete);
    CHECK(blank.args.empty());
    CHECK(blank.consumed == 2);
}

TEST_CASE("resp::parse skips a multibulk count of 0 or less, as Redis does", "[kv][resp]") {
    auto skipped = resp::parse("*-10\r\nPING\r\n");
    CHECK(skipped.state == resp::status::complete);
    CHECK(skipped.args.empty());
    CHECK(skipped.consumed == 6);
    auto all = parse_all("*-10\r\n*0\r\n*-1\r\n" + command({"PING"}) + "*-9223372036854775808\r\n");
    CHECK(all.commands == std::vector<std::vector<std::string>>{{"PING"}});
    CHECK(all.error.empty());
    CHECK(all.unfinished == 0);
}

TEST_CASE("resp::parse splits inline arguments with Redis's quotes and escapes", "[kv][resp]") {
    using args = std::vector<std::string>;
    // What redis-server 7.0 makes of each line (its sdssplitargs).
    std::vector<std::pair<std::string, args>> cases{
        {"set \"a\\x41b\" 'c d'\r\n", {"set", "aAb", "c d"}},
        {"echo \"\\n\\r\\t\\b\\a\\z\\x4\"\r\n", {"echo", "\n\r\t\b\azx4"}},
        {"echo \"\\xZZ\" \"x\\x4a\\x4\"\r\n", {"echo", "xZZ", "xJx4"}},
        {"echo \"\" ''\r\n", {"echo", "", ""}},
        {"set 'a\\'b' \"a'b\" 'a\"b'\r\n", {"set", "a'b", "a'b", "a\"b"}},
        {"echo a\"b c\" d\r\n", {"echo", "ab c", "d"}},
        {"echo a\vb \"a\"\v\r\n", {"echo", "a\vb", "a"}},
        {"\v echo  x\r\r\n", {"echo", "x"}},
        {"echo \"\\\\\" 'a\\b'\n", {"echo", "\\", "a\\b"}},
        {"GET \"\\x00\"\n", {"GET", std::string(1, '\0')}},
    };
    for (const auto& [line, expected] : cases) {
        CAPTURE(line);
        auto r = resp::parse(line);
        REQUIRE(r.state == resp::status::complete);
        CHECK(owned(r.args) == expected);
        CHECK(r.consumed == line.size());
        // The same however the line arrives, and a moved request keeps its arguments.
        CHECK(parse_in_chunks(line, 1).commands == std::vector<args>{expected});
        auto moved = std::move(r);
        CHECK(owned(moved.args) == expected);
    }
    for (std::string bad :
         {"set \"\"\"test-key\"\"\" test-value\r\n", "set \"a\r\n", "set a\"b c\r\n",
          "set \"a\"b c\r\n", "echo \"a\\\"\r\n", "echo 'a\\\\'\r\n", "echo 'a\n"}) {
        CAPTURE(bad);
        CHECK(resp::parse(bad).error == "unbalanced quotes in request");
    }
}

TEST_CASE("resp::parse rejects bad input with Redis's protocol errors", "[kv][resp]") {
    for (const auto& bad : bad_inputs()) {
        CAPTURE(bad.name);
        auto r = resp::parse(bad.bytes);
        if (bad.parse_error.empty()) {
            CHECK(r.state == resp::status::incomplete);
        } else {
            CHECK(r.state == resp::status::error);
            CHECK(r.error == bad.parse_error);
            // The same verdict however the bytes arrive.
            CHECK(parse_in_chunks(bad.bytes, 1).error == bad.parse_error);
            CHECK(parse_in_chunks(bad.bytes, 4096).error == bad.parse_error);
        }
    }
}

TEST_CASE("resp::parse accepts its limits exactly and rejects one past them", "[kv][resp]") {
    // A bulk string of exactly 512 MiB and a count of exactly INT_MAX are valid beginnings.
    auto bulk = resp::parse("*1\r\n$536870912\r\nabc");
    CHECK(bulk.state == resp::status::incomplete);
    CHECK(bulk.wanted == 16 + std::size_t{536870912} + 2);
    CHECK(resp::max_arguments == 2147483647);
    CHECK(resp::parse("*2147483647\r\n").state == resp::status::incomplete);
    CHECK(resp::parse("*2147483648\r\n").error == "invalid multibulk length");
    // Far more arguments than a client usually sends, in one request.
    std::string many = "*1048577\r\n";
    for (std::size_t i = 0; i < 1048577; ++i) many += "$0\r\n\r\n";
    auto full = resp::parse(many);
    CHECK(full.state == resp::status::complete);
    CHECK(full.args.size() == 1048577);
    CHECK(full.consumed == many.size());
    // Inline requests and length lines up to 64 KiB.
    std::string line(resp::max_line_length, 'a');
    CHECK(resp::parse(line + "\n").state == resp::status::complete);
    CHECK(resp::parse(line + "a\n").state == resp::status::error);
    CHECK(resp::parse(line).state == resp::status::incomplete);
    CHECK(resp::parse(line + "a").state == resp::status::error);
    std::string count = "*" + std::string(resp::max_line_length - 2, '0') + "1";
    CHECK(resp::parse(count + "\r").state == resp::status::incomplete);
    CHECK(resp::parse(count + "\r\n").error == "invalid multibulk length");
    CHECK(resp::parse(count + "1\r\n").error == "too big mbulk count string");
}

TEST_CASE("resp::parse resumes where it stopped and finds what a fresh parse finds", "[kv][resp]") {
    std::vector<std::string> keys;
    for (int i = 0; i < 1000; ++i) keys.push_back("key:" + std::to_string(i));
    std::vector<std::string_view> args{"DEL"};
    args.insert(args.end(), keys.begin(), keys.end());
    std::string in = command(args);
    auto fresh = resp::parse(in);
    REQUIRE(fresh.state == resp::status::complete);

    auto first = resp::parse(std::string_view(in).substr(0, in.size() / 3));
    REQUIRE(first.state == resp::status::incomplete);
    CHECK(first.resume.arguments > 100);
    CHECK(first.resume.offset > in.size() / 4);
    auto second = resp::parse(std::string_view(in).substr(0, in.size() * 2 / 3), first.resume);
    REQUIRE(second.state == resp::status::incomplete);
    CHECK(second.resume.arguments > first.resume.arguments);
    auto last = resp::parse(in, second.resume);
    REQUIRE(last.state == resp::status::complete);
    CHECK(last.consumed == fresh.consumed);
    CHECK(last.args == fresh.args);
    CHECK(last.args.size() == 1001);
}

TEST_CASE("resp::parse_integer reads Redis's strict integers only", "[kv][resp]") {
    CHECK(resp::parse_integer("0") == 0);
    CHECK(resp::parse_integer("-1") == -1);
    CHECK(resp::parse_integer("9223372036854775807") == INT64_MAX);
    CHECK(resp::parse_integer("-9223372036854775808") == INT64_MIN);
    for (std::string_view bad :
         {"", "-", "+1", "01", "-0", " 1", "1 ", "1a", "0x1", "9223372036854775808",
          "-9223372036854775809", "99999999999999999999"}) {
        CAPTURE(bad);
        CHECK_FALSE(resp::parse_integer(bad).has_value());
    }
}

TEST_CASE("resp::parse allocates nothing in proportion to a claimed count or length",
          "[kv][resp]") {
    if (!KV_TEST_COUNTS_ALLOCATIONS) {
        SUCCEED("not counted under AddressSanitizer, which owns operator new");
        return;
    }
    for (std::string in : {"*1\r\n$536870912\r\nabc", "*2147483647\r\n$1\r\na\r\n$1\r\nb\r\n",
                           "*2147483647\r\n", "*2\r\n$536870912\r\n"}) {
        CAPTURE(in);
        largest_allocation = 0;
        counting = true;
        auto r = resp::parse(in);
        counting = false;
        CHECK(r.state == resp::status::incomplete);
        CHECK(largest_allocation <= 1024);
    }
}

TEST_CASE("resp encoders write RESP2 replies byte for byte", "[kv][resp]") {
    std::string out;
    resp::append_simple_string(out, "OK");
    resp::append_error(out, "ERR bad\r\nthing");
    resp::append_integer(out, -42);
    resp::append_bulk_string(out, std::string_view("a\0b", 3));
    resp::append_bulk_string(out, "");
    resp::append_null_bulk_string(out);
    resp::append_array_header(out, 2);
    CHECK(out == "+OK\r\n-ERR bad  thing\r\n:-42\r\n$3\r\na\0b\r\n$0\r\n\r\n$-1\r\n*2\r\n"s);
    auto request = command({"a", "", std::string_view("\r\n", 2)});
    auto r = resp::parse(request);
    CHECK(owned(r.args) == std::vector<std::string>{"a", "", "\r\n"});
}

// The sample as a real process.

namespace {

// A temporary directory, removed with everything in it.
class scratch_dir {
public:
    scratch_dir() {
        auto base = std::filesystem::temp_directory_path() / "netloop-kv-XXXXXX";
        std::string pattern = base.string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        path_ = pattern;
    }
    ~scratch_dir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    scratch_dir(const scratch_dir&) = delete;
    scratch_dir& operator=(const scratch_dir&) = delete;

    [[nodiscard]] std::string file(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

// The full path of `name` on PATH, or empty.
std::string find_tool(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::istringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return {};
}

// redis-cli and redis-benchmark are part of the test: missing, they fail it rather than skip it.
std::string require_tool(const std::string& name) {
    auto found = find_tool(name);
    if (found.empty()) {
        FAIL(name << " is not on PATH: install the Debian package redis-tools "
                     "(apt-get install -y redis-tools; the setup script does)");
    }
    return found;
}

std::string shell_quote(const std::string& arg) {
    std::string out = "'";
    for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

struct tool_result {
    int status = -1;  // the exit status; 124 if `timeout` stopped it, 128 + n for signal n
    std::string output;
};

// Runs `argv` with stdin from `input`, stdout and stderr captured; at most 60 s.
tool_result run_tool(const scratch_dir& dir, const std::vector<std::string>& argv,
                     const std::string& input = "/dev/null") {
    std::string line = "timeout -k 5 60";
    for (const auto& arg : argv) line += " " + shell_quote(arg);
    auto output = dir.file("tool-output");
    line += " <" + shell_quote(input) + " >" + shell_quote(output) + " 2>&1";
    int st = std::system(line.c_str());
    tool_result r;
    if (st != -1) r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r.output = read_file(output);
    return r;
}

// kv started on 127.0.0.1:0; stop() sends SIGTERM and says whether it exited with status 0.
class kv_process {
public:
    explicit kv_process(const scratch_dir& dir, const std::vector<std::string>& flags = {})
        : stderr_path_(dir.file("kv-stderr")),
          process_(argv(flags), {}, stderr_path_),
          port_(process_.announced_port()) {}

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] std::string port_text() const { return std::to_string(port_); }
    [[nodiscard]] netloop::address address() const {
        return netloop::address::ipv4("127.0.0.1", port_);
    }
    [[nodiscard]] std::string errors() const { return read_file(stderr_path_); }

    bool stop() {
        process_.signal(SIGTERM);
        return process_.exited_with(0, 10s);
    }

    void signal(int signo) const { process_.signal(signo); }
    bool exited_with(int code, std::chrono::milliseconds limit) {
        return process_.exited_with(code, limit);
    }

private:
    static std::vector<std::string> argv(const std::vector<std::string>& flags) {
        std::vector<std::string> out{netloop::test::sample_path("kv"), "127.0.0.1:0"};
        out.insert(out.end(), flags.begin(), flags.end());
        return out;
    }

    std::string stderr_path_;
    netloop::test::child_process process_;
    std::uint16_t port_;
};

// Everything `c` reads until the peer closes or resets the connection.
task<std::string> read_to_end(netloop::connection& c) {
    std::string out;
    std::array<std::byte, 65536> buf;
    for (;;) {
        std::size_t n = 0;
        try {
            n = co_await c.read(buf, 10s);
        } catch (const netloop::error& e) {
            if (e.kind() != errc::connection_closed && e.kind() != errc::connection_reset) throw;
            break;
        }
        out.append(reinterpret_cast<const char*>(buf.data()), n);
    }
    co_return out;
}

// Exactly `n` bytes from `c`, as text.
task<std::string> read_text(netloop::connection& c, std::size_t n) {
    auto bytes = co_await netloop::test::read_n(c, n);
    co_return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Sends `request` and reads a reply of exactly `reply_size` bytes.
task<std::string> ask(netloop::connection& c, std::string request, std::size_t reply_size) {
    co_await c.write(request, 10s);
    co_return co_await read_text(c, reply_size);
}

// Writes `bytes`; a server that closed on us part way through is fine.
task<> write_all_or_reset(netloop::connection& c, std::string bytes) {
    try {
        co_await c.write(bytes, 10s);
    } catch (const netloop::error& e) {
        if (e.kind() != errc::connection_reset && e.kind() != errc::connection_closed) throw;
    }
}

}  // namespace

TEST_CASE("kv answers redis-cli: SET, GET, INCR, DECR, MSET, MGET, DEL, EXISTS, TTL, DBSIZE",
          "[kv][process]") {
    auto cli = require_tool("redis-cli");
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto redis = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {cli, "-h", "127.0.0.1", "-p", kv.port_text()});
        auto r = run_tool(dir, args);
        CHECK(r.status == 0);
        return r.output;
    };
    CHECK(redis({"PING"}) == "PONG\n");
    CHECK(redis({"SET", "a", "1"}) == "OK\n");
    CHECK(redis({"GET", "a"}) == "1\n");
    CHECK(redis({"INCR", "n"}) == "1\n");
    CHECK(redis({"INCR", "n"}) == "2\n");
    CHECK(redis({"DECR", "n"}) == "1\n");
    CHECK(redis({"MSET", "x", "hello world", "y", ""}) == "OK\n");
    CHECK(redis({"MGET", "a", "x", "y", "missing"}) == "1\nhello world\n\n\n");
    CHECK(redis({"SET", "t", "v", "EX", "100"}) == "OK\n");
    auto ttl = std::stoi(redis({"TTL", "t"}));
    CHECK(ttl > 0);
    CHECK(ttl <= 100);
    CHECK(redis({"TTL", "a"}) == "-1\n");
    CHECK(redis({"TTL", "missing"}) == "-2\n");
    CHECK(redis({"EXPIRE", "a", "50"}) == "1\n");
    CHECK(redis({"EXPIRE", "missing", "50"}) == "0\n");
    CHECK(redis({"SET", "a", "2", "NX"}) == "\n");
    CHECK(redis({"SET", "b", "2", "XX"}) == "\n");
    CHECK(redis({"SET", "a", "3", "XX", "KEEPTTL"}) == "OK\n");
    CHECK(redis({"GET", "a"}) == "3\n");
    CHECK(redis({"EXISTS", "a", "x", "missing", "a"}) == "3\n");
    CHECK(redis({"ECHO", "hi there"}) == "hi there\n");
    CHECK(redis({"DBSIZE"}) == "5\n");
    CHECK(redis({"DEL", "a", "x", "missing"}) == "2\n");
    CHECK(redis({"DBSIZE"}) == "3\n");
    CHECK(redis({"CONFIG", "GET", "save"}) == "save\n\n");
    CHECK(redis({"FLUSHALL"}) == "OK\n");
    CHECK(redis({"DBSIZE"}) == "0\n");
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

TEST_CASE("kv answers mistakes in Redis's words and keeps the connection", "[kv][process]") {
    auto cli = require_tool("redis-cli");
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto redis = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {cli, "-h", "127.0.0.1", "-p", kv.port_text()});
        return run_tool(dir, args).output;
    };
    CHECK(redis({"NOSUCH", "x", "y"}) ==
          "ERR unknown command 'NOSUCH', with args beginning with: 'x' 'y' \n\n");
    CHECK(redis({"GET"}) == "ERR wrong number of arguments for 'get' command\n\n");
    CHECK(redis({"MSET", "a", "1", "b"}) == "ERR wrong number of arguments for 'mset' command\n\n");
    CHECK(redis({"SET", "s", "abc"}) == "OK\n");
    CHECK(redis({"INCR", "s"}) == "ERR value is not an integer or out of range\n\n");
    CHECK(redis({"SET", "m", "9223372036854775807"}) == "OK\n");
    CHECK(redis({"INCR", "m"}) == "ERR increment or decrement would overflow\n\n");
    CHECK(redis({"SET", "k", "v", "EX", "0"}) == "ERR invalid expire time in 'set' command\n\n");
    CHECK(redis({"SET", "k", "v", "EX", "ten"}) ==
          "ERR value is not an integer or out of range\n\n");
    CHECK(redis({"SET", "k", "v", "NX", "XX"}) == "ERR syntax error\n\n");

    // Over one connection: an unknown command is not a protocol error, the client goes on.
    std::string garbage("\x00\x01\xfe\xff\x80\n", 6);
    auto replies = run_bounded([&]() -> task<std::string> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        co_await c.write(garbage + "PING\r\n", 5s);
        std::string expected_error =
            "-ERR unknown command '" + garbage.substr(0, 5) + "', with args beginning with: \r\n";
        co_return co_await read_text(c, expected_error.size() + 7);
    });
    CHECK(replies == "-ERR unknown command '" + garbage.substr(0, 5) +
                         "', with args beginning with: \r\n+PONG\r\n");
    CHECK(kv.stop());
}

TEST_CASE("kv takes a redis-cli --pipe load of 10,000 commands: 10000 replies, 0 errors",
          "[kv][process]") {
    auto cli = require_tool("redis-cli");
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    std::string load;
    for (int i = 0; i < 10000; ++i) {
        auto key = "key:" + std::to_string(i);
        auto value = "value " + std::to_string(i);
        if (i % 4 == 3) {
            load += "INCR counter\r\n";  // inline, as `--pipe` users often write them
        } else {
            load += command({"SET", key, value});
        }
    }
    auto input = dir.file("pipe-input");
    std::ofstream(input, std::ios::binary) << load;
    auto r = run_tool(dir, {cli, "-h", "127.0.0.1", "-p", kv.port_text(), "--pipe"}, input);
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("errors: 0, replies: 10000") != std::string::npos);
    auto check = run_tool(
        dir, {cli, "-h", "127.0.0.1", "-p", kv.port_text(), "MGET", "key:9998", "counter"});
    CHECK(check.output == "value 9998\n2500\n");
    CHECK(kv.stop());
}

TEST_CASE("redis-benchmark runs ping, set, get, incr and mset against kv without errors",
          "[kv][process]") {
    auto benchmark = require_tool("redis-benchmark");
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto r = run_tool(dir, {benchmark, "-h", "127.0.0.1", "-p", kv.port_text(), "-q", "-t",
                            "ping,set,get,incr,mset", "-n", "20000", "-c", "20", "-P", "16"});
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("rror") == std::string::npos);
    for (std::string test :
         {"PING_INLINE: ", "PING_MBULK: ", "SET: ", "GET: ", "INCR: ", "MSET (10 keys): "}) {
        CAPTURE(test);
        auto at = r.output.rfind(test);
        REQUIRE(at != std::string::npos);
        auto line = r.output.substr(at, r.output.find('\n', at) - at);
        CHECK(line.find(" requests per second") != std::string::npos);
    }
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

TEST_CASE("kv answers pipelined commands in order, also when they arrive a byte at a time",
          "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    std::string requests;
    std::string expected;
    for (int i = 1; i <= 2000; ++i) {
        requests += i % 2 ? command({"INCR", "p"}) : std::string("INCR p\r\n");
        expected += ":" + std::to_string(i) + "\r\n";
    }
    std::string trickle = command({"SET", "k", "one byte at a time"}) + "GET k\r\n";
    std::string trickle_expected = "+OK\r\n$18\r\none byte at a time\r\n";
    auto replies = run_bounded([&]() -> task<std::pair<std::string, std::string>> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        auto batch_replies = co_await ask(c, requests, expected.size());
        for (char byte : trickle) {
            co_await c.write(std::string_view(&byte, 1), 5s);
            co_await netloop::test::yield();
        }
        auto slow_replies = co_await read_text(c, trickle_expected.size());
        co_return std::pair{batch_replies, slow_replies};
    });
    CHECK(replies.first == expected);
    CHECK(replies.second == trickle_expected);
    CHECK(kv.stop());
}

TEST_CASE("kv stores and returns an 8 MiB value intact", "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto bytes = netloop::test::pattern(8 << 20, 5);
    std::string value(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    std::string get_reply;
    resp::append_bulk_string(get_reply, value);
    // Built outside the coroutine: g++ 12 rejects a braced list inside a co_await statement.
    auto set_request = command({"SET", "big", value});
    auto replies = run_bounded([&]() -> task<std::pair<std::string, std::string>> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        auto stored = co_await ask(c, set_request, 5);
        auto read_back = co_await ask(c, "GET big\r\n", get_reply.size());
        co_return std::pair{stored, read_back};
    });
    CHECK(replies.first == "+OK\r\n");
    CHECK((replies.second == get_reply));  // parenthesised: no 8 MiB dump on failure
    CHECK(kv.stop());
}

TEST_CASE("kv expires keys when they are read and by its periodic sweep", "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto result = run_bounded([&]() -> task<std::tuple<std::string, bool, bool>> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        auto before = co_await ask(c, "SET soon v PX 50\r\nSET later v EX 1000\r\nDBSIZE\r\n", 14);
        // The sweep removes `soon` though nobody reads it: DBSIZE counts what is stored.
        bool gone = false;
        for (int i = 0; i < 500 && !gone; ++i) {
            co_await netloop::test::sleep_for(10ms);
            auto size = co_await ask(c, "DBSIZE\r\n", 4);
            gone = size == ":1\r\n";
        }
        co_await ask(c, "SET once v PX 1\r\n", 5);
        bool expired = false;
        for (int i = 0; i < 500 && !expired; ++i) {
            co_await netloop::test::sleep_for(2ms);
            auto reply = co_await ask(c, "GET once\r\n", 5);
            expired = reply == "$-1\r\n";
            if (!expired) co_await read_text(c, 2);  // the rest of `$1\r\nv\r\n`
        }
        co_return std::tuple{before, expired, gone};
    });
    CHECK(std::get<0>(result) == "+OK\r\n+OK\r\n:2\r\n");
    CHECK(std::get<1>(result));  // read after its time: gone
    CHECK(std::get<2>(result));  // never read: swept
    CHECK(kv.stop());
}

TEST_CASE("bad RESP input costs that client an error reply and its connection, nothing else",
          "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto inputs = bad_inputs();
    // And the fuzz corpus's bad seeds, answered as the parser judges them.
    const char* source = std::getenv("NETLOOP_SOURCE_DIR");
    REQUIRE(source != nullptr);
    auto corpus = std::filesystem::path(source) / "test/fuzz/corpus/resp";
    for (const auto& seed : std::filesystem::directory_iterator(corpus)) {
        auto name = seed.path().filename().string();
        if (name.rfind("bad-", 0) != 0) continue;
        auto bytes = read_file(seed.path());
        auto verdict = parse_all(bytes);
        REQUIRE(verdict.commands.empty());
        std::string reply;
        resp::append_error(reply,
                           "ERR Protocol error: " +
                               (verdict.error.empty() ? "unexpected end of input" : verdict.error));
        inputs.push_back({"seed " + name, bytes, verdict.error, reply});
    }
    REQUIRE(inputs.size() >= bad_inputs().size() + 9);
    struct outcome {
        std::string reply;
        std::string other_before;
        std::string other_after;
        std::string newcomer;
    };
    auto ping = command({"PING"});  // outside the coroutine, for g++ 12
    auto outcomes = run_bounded(
        [&]() -> task<std::vector<outcome>> {
            std::vector<outcome> out;
            auto other = co_await netloop::connect(kv.address(), 5s);
            for (const auto& bad : inputs) {
                outcome o;
                o.other_before = co_await ask(other, "PING\r\n", 7);
                auto c = co_await netloop::connect(kv.address(), 5s);
                co_await write_all_or_reset(c, bad.bytes);
                c.shutdown_write();
                o.reply = co_await read_to_end(c);
                o.other_after = co_await ask(other, "PING\r\n", 7);
                auto newcomer = co_await netloop::connect(kv.address(), 5s);
                o.newcomer = co_await ask(newcomer, ping, 7);
                out.push_back(std::move(o));
            }
            co_return out;
        },
        60s);
    REQUIRE(outcomes.size() == inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        CAPTURE(inputs[i].name);
        CHECK(outcomes[i].reply == inputs[i].reply);
        CHECK(outcomes[i].other_before == "+PONG\r\n");
        CHECK(outcomes[i].other_after == "+PONG\r\n");
        CHECK(outcomes[i].newcomer == "+PONG\r\n");
    }
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

TEST_CASE("QUIT answers +OK and closes, after the replies before it", "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto replies = run_bounded([&]() -> task<std::string> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        co_await c.write("PING\r\nQUIT\r\nPING\r\n", 5s);
        co_return co_await read_to_end(c);
    });
    CHECK(replies == "+PONG\r\n+OK\r\n");
    CHECK(kv.stop());
}

TEST_CASE("kv stops on SIGTERM with status 0 while clients sit idle, and closes them",
          "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    struct outcome {
        std::string pong;
        bool stopped = false;
        std::vector<std::string> after;
    };
    auto result = run_bounded([&]() -> task<outcome> {
        outcome o;
        std::vector<netloop::connection> idle;
        for (int i = 0; i < 3; ++i) {
            auto c = co_await netloop::connect(kv.address(), 5s);
            idle.push_back(std::move(c));
        }
        o.pong = co_await ask(idle.front(), "PING\r\n", 7);
        o.stopped = kv.stop();  // blocks this loop, which only holds the idle clients
        for (auto& c : idle) {
            auto rest = co_await read_to_end(c);
            o.after.push_back(std::move(rest));
        }
        co_return o;
    });
    CHECK(result.pong == "+PONG\r\n");
    CHECK(result.stopped);
    CHECK(result.after == std::vector<std::string>(3));
}

// Redis 7.0's own replies, byte for byte: each case's bytes were sent to redis-server 7.0 with an
// empty database, and its answer is the expected one. Where kv differs on purpose (one database,
// RESP2 only, a word at the end of input), the case says so.

namespace {

using command_list = std::vector<std::vector<std::string>>;

std::string commands(const command_list& list) {
    std::string out;
    for (const auto& args : list) {
        std::vector<std::string_view> views(args.begin(), args.end());
        resp::append_command(out, views);
    }
    return out;
}

// Sends `request` on a new connection, closes the sending side, and returns all kv answers.
std::string send_and_close(const kv_process& kv, const std::string& request) {
    return run_bounded([&]() -> task<std::string> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        co_await write_all_or_reset(c, request);
        c.shutdown_write();
        co_return co_await read_to_end(c);
    });
}

struct redis_case {
    std::string name;
    std::string request;
    std::string reply;  // what redis-server 7.0 answers
};

// Runs each case on a new connection after FLUSHALL, and checks kv answers what Redis does.
void check_cases(const std::vector<redis_case>& cases) {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto flush = commands({{"FLUSHALL"}});
    for (const auto& c : cases) {
        CAPTURE(c.name);
        CHECK(send_and_close(kv, flush + c.request) == "+OK\r\n" + c.reply);
    }
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

}  // namespace

TEST_CASE("kv skips multibulk counts of 0 or less and takes counts up to INT_MAX, as Redis does",
          "[kv][process]") {
    const std::string eof = "-ERR Protocol error: unexpected end of input\r\n";
    check_cases({
        {"negative count", "*-10\r\nPING\r\n", "+PONG\r\n"},
        {"zero and -1", "*0\r\n*-1\r\n" + commands({{"PING"}}), "+PONG\r\n"},
        // Redis waits for the rest too; at the end of input it closes without a word, kv says why.
        {"INT_MAX arguments: a valid beginning", "*2147483647\r\n$4\r\nPING\r\n", eof},
        {"one past INT_MAX", "*2147483648\r\nPING\r\n",
         "-ERR Protocol error: invalid multibulk length\r\n"},
    });
}

TEST_CASE("kv reads quoted inline commands as Redis does, and closes on unbalanced quotes",
          "[kv][process]") {
    const std::string unbalanced = "-ERR Protocol error: unbalanced quotes in request\r\n";
    check_cases({
        {"double and single quotes", "set \"a\\x41b\" 'c d'\r\nget \"aAb\"\r\n",
         "+OK\r\n$3\r\nc d\r\n"},
        {"escapes", "echo \"\\n\\r\\t\\b\\a\\z\\x4\"\r\n", "$8\r\n\n\r\t\b\azx4\r\n"},
        {"escaped single quote", "set 'a\\'b' c\r\nget \"a'b\"\r\n", "+OK\r\n$1\r\nc\r\n"},
        {"empty quotes", "echo \"\"\r\necho ''\r\n", "$0\r\n\r\n$0\r\n\r\n"},
        {"vertical tab", "echo a\vb\r\n", "$3\r\na\vb\r\n"},
        {"quotes inside a word", "echo a\"b c\" d\r\n",
         "-ERR wrong number of arguments for 'echo' command\r\n"},
        {"tripled quotes", "set \"\"\"test-key\"\"\" test-value\r\nping\r\n", unbalanced},
        {"unterminated", "set \"a\r\nping\r\n", unbalanced},
        {"word after a closing quote", "set \"a\"b c\r\n", unbalanced},
        {"escaped closing quote", "echo \"a\\\"\r\n", unbalanced},
        {"replies before the error come first", "PING\r\nset 'a b\r\nPING\r\n",
         "+PONG\r\n" + unbalanced},
    });
}

TEST_CASE("kv answers PING, SET and EXPIRE options as Redis 7.0 does", "[kv][process]") {
    const std::string set_time = "-ERR invalid expire time in 'set' command\r\n";
    const std::string expire_time = "-ERR invalid expire time in 'expire' command\r\n";
    const std::string nx_conflict =
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n";
    check_cases({
        {"PING x y z", "PING x y z\r\nPING x\r\n",
         "-ERR wrong number of arguments for 'ping' command\r\n$1\r\nx\r\n"},
        {"SET GET",
         commands({{"SET", "k", "v", "GET"},
                   {"SET", "k", "w", "GET"},
                   {"SET", "nx1", "v", "NX", "GET"},
                   {"SET", "k", "z", "NX", "GET"},
                   {"GET", "k"},
                   {"SET", "k", "v", "GET", "GET"}}),
         "$-1\r\n$1\r\nv\r\n$-1\r\n$1\r\nw\r\n$1\r\nw\r\n$1\r\nw\r\n"},
        {"SET EXAT and PXAT",
         commands({{"SET", "k", "v", "PXAT", "1"},
                   {"GET", "k"},
                   {"SET", "k", "v", "EXAT", "99999999999"},
                   {"EXPIRETIME", "k"},
                   {"SET", "k", "v", "PXAT", "99999999999999"},
                   {"PEXPIRETIME", "k"},
                   {"SET", "k", "w", "KEEPTTL"},
                   {"PEXPIRETIME", "k"},
                   {"SET", "k", "v"},
                   {"PEXPIRETIME", "k"}}),
         "+OK\r\n$-1\r\n+OK\r\n:99999999999\r\n+OK\r\n:99999999999999\r\n+OK\r\n"
         ":99999999999999\r\n+OK\r\n:-1\r\n"},
        {"SET's invalid times and conflicts",
         commands({{"SET", "k", "v", "EX", "0"},
                   {"SET", "k", "v", "PX", "-1"},
                   {"SET", "k", "v", "EXAT", "0"},
                   {"SET", "k", "v", "EX", "9223372036854776"},
                   {"SET", "k", "v", "PX", "9223372036854775807"},
                   {"SET", "k", "v", "EX", "1", "PX", "1"},
                   {"SET", "k", "v", "KEEPTTL", "EX", "1"},
                   {"SET", "k", "v", "EX"},
                   {"SET", "k", "v", "EXAT", "x"}}),
         set_time + set_time + set_time + set_time + set_time +
             "-ERR syntax error\r\n-ERR syntax error\r\n-ERR syntax error\r\n"
             "-ERR value is not an integer or out of range\r\n"},
        {"EXPIRE's option conflicts",
         commands({{"SET", "k", "v"},
                   {"EXPIRE", "k", "100", "NX", "XX"},
                   {"EXPIRE", "k", "100", "GT", "LT"},
                   {"EXPIRE", "k", "100", "NX", "GT"},
                   {"EXPIRE", "k", "100", "foo"},
                   {"EXPIRE", "k", "abc", "foo"},
                   {"EXPIRE", "k", "abc"}}),
         "+OK\r\n" + nx_conflict +
             "-ERR GT and LT options at the same time are not compatible\r\n" + nx_conflict +
             "-ERR Unsupported option foo\r\n-ERR Unsupported option foo\r\n"
             "-ERR value is not an integer or out of range\r\n"},
        {"EXPIRE NX, XX, GT, LT (no expiry is an infinite one)",
         commands({{"SET", "k", "v"},
                   {"PEXPIREAT", "k", "99999999999000", "XX"},
                   {"PEXPIREAT", "k", "99999999999000", "GT"},
                   {"PEXPIREAT", "k", "99999999999000", "LT"},
                   {"PEXPIRETIME", "k"},
                   {"PEXPIREAT", "k", "99999999999001", "GT"},
                   {"PEXPIREAT", "k", "99999999999000", "GT"},
                   {"PEXPIREAT", "k", "99999999999002", "LT"},
                   {"PEXPIREAT", "k", "99999999998000", "LT"},
                   {"PEXPIREAT", "k", "99999999997000", "NX"},
                   {"PEXPIREAT", "k", "99999999997000", "XX"},
                   {"EXPIRETIME", "k"},
                   {"EXPIRE", "missing", "1", "XX"}}),
         "+OK\r\n:0\r\n:0\r\n:1\r\n:99999999999000\r\n:1\r\n:0\r\n:0\r\n:1\r\n:0\r\n:1\r\n"
         ":99999999997\r\n:0\r\n"},
        {"a negative EXPIRE with LT deletes",
         commands({{"SET", "k", "v"},
                   {"EXPIRE", "k", "-1", "LT"},
                   {"EXISTS", "k"},
                   {"SET", "k", "v", "EX", "100"},
                   {"EXPIRE", "k", "-1", "LT"},
                   {"EXISTS", "k"},
                   {"SET", "k", "v"},
                   {"PEXPIREAT", "k", "-5"},
                   {"EXISTS", "k"}}),
         "+OK\r\n:1\r\n:0\r\n+OK\r\n:1\r\n:0\r\n+OK\r\n:1\r\n:0\r\n"},
        {"EXPIRE overflow",
         commands({{"EXPIRE", "foo", "9223370399119966"},
                   {"SET", "foo", "1"},
                   {"EXPIRE", "foo", "9223370399119966"},
                   {"EXPIRE", "foo", "9223372036854775807"},
                   {"EXPIRE", "foo", "-9223372036854775808"},
                   {"PEXPIRE", "foo", "9223372036854775807"},
                   {"EXPIREAT", "foo", "9223372036854775807"},
                   {"PEXPIREAT", "foo", "9223372036854775807"},
                   {"PEXPIRETIME", "foo"},
                   {"EXPIRETIME", "foo"}}),
         expire_time + "+OK\r\n" + expire_time + expire_time + expire_time +
             "-ERR invalid expire time in 'pexpire' command\r\n"
             "-ERR invalid expire time in 'expireat' command\r\n"
             ":1\r\n:9223372036854775807\r\n:9223372036854776\r\n"},
    });
}

TEST_CASE("kv's added string commands answer as Redis 7.0 does, errors and overflow included",
          "[kv][process]") {
    const std::string not_integer = "-ERR value is not an integer or out of range\r\n";
    const std::string overflow = "-ERR increment or decrement would overflow\r\n";
    const std::string not_float = "-ERR value is not a valid float\r\n";
    check_cases({
        {"SETNX SETEX PSETEX",
         commands({{"SETNX", "a", "1"},
                   {"SETNX", "a", "2"},
                   {"GET", "a"},
                   {"SETEX", "a", "0", "x"},
                   {"SETEX", "a", "-1", "x"},
                   {"SETEX", "a", "x", "x"},
                   {"SETEX", "a", "9223372036854776", "x"},
                   {"PSETEX", "a", "0", "y"},
                   {"SETEX", "a"},
                   {"SETNX", "a"}}),
         ":1\r\n:0\r\n$1\r\n1\r\n-ERR invalid expire time in 'setex' command\r\n"
         "-ERR invalid expire time in 'setex' command\r\n" +
             not_integer +
             "-ERR invalid expire time in 'setex' command\r\n"
             "-ERR invalid expire time in 'psetex' command\r\n"
             "-ERR wrong number of arguments for 'setex' command\r\n"
             "-ERR wrong number of arguments for 'setnx' command\r\n"},
        {"GETSET drops the expiry, GETDEL deletes",
         commands({{"SET", "a", "y", "PXAT", "99999999999999"},
                   {"GETSET", "a", "z"},
                   {"TTL", "a"},
                   {"GETSET", "nope", "z"},
                   {"GETDEL", "nope2"},
                   {"GETDEL", "a"},
                   {"GETDEL", "a"},
                   {"GETDEL"}}),
         "+OK\r\n$1\r\ny\r\n:-1\r\n$-1\r\n$-1\r\n$1\r\nz\r\n$-1\r\n"
         "-ERR wrong number of arguments for 'getdel' command\r\n"},
        {"GETEX",
         commands({{"SET", "g", "v"},
                   {"GETEX", "g"},
                   {"GETEX", "g", "PXAT", "99999999999999"},
                   {"PEXPIRETIME", "g"},
                   {"GETEX", "g", "PERSIST"},
                   {"TTL", "g"},
                   {"GETEX", "g", "EX", "0"},
                   {"GETEX", "g", "EX", "100", "PX", "100"},
                   {"GETEX", "g", "PERSIST", "EX", "1"},
                   {"GETEX", "g", "NX"},
                   {"GETEX", "g", "EX"},
                   {"GETEX", "nope", "EX", "0"},
                   {"GETEX", "g", "EXAT", "1"},
                   {"EXISTS", "g"}}),
         "+OK\r\n$1\r\nv\r\n$1\r\nv\r\n:99999999999999\r\n$1\r\nv\r\n:-1\r\n"
         "-ERR invalid expire time in 'getex' command\r\n-ERR syntax error\r\n"
         "-ERR syntax error\r\n-ERR syntax error\r\n-ERR syntax error\r\n$-1\r\n$1\r\nv\r\n"
         ":0\r\n"},
        {"APPEND STRLEN GETRANGE",
         commands({{"APPEND", "ap", "ab"},
                   {"APPEND", "ap", "cd"},
                   {"STRLEN", "ap"},
                   {"STRLEN", "nope"},
                   {"GETRANGE", "ap", "0", "-1"},
                   {"GETRANGE", "ap", "1", "2"},
                   {"GETRANGE", "ap", "-2", "-1"},
                   {"GETRANGE", "ap", "-1", "-2"},
                   {"GETRANGE", "ap", "5", "10"},
                   {"GETRANGE", "ap", "-100", "100"},
                   {"GETRANGE", "nope", "0", "-1"},
                   {"GETRANGE", "ap", "a", "1"},
                   {"SET", "e", ""},
                   {"GETRANGE", "e", "0", "-1"},
                   {"GETRANGE", "ap", "0", "9223372036854775807"}}),
         ":2\r\n:4\r\n:4\r\n:0\r\n$4\r\nabcd\r\n$2\r\nbc\r\n$2\r\ncd\r\n$0\r\n\r\n$0\r\n\r\n"
         "$4\r\nabcd\r\n$0\r\n\r\n" +
             not_integer + "+OK\r\n$0\r\n\r\n$4\r\nabcd\r\n"},
        {"SETRANGE",
         commands({{"SET", "ap", "abcd"},
                   {"SETRANGE", "ap", "1", "XY"},
                   {"GET", "ap"},
                   {"SETRANGE", "ap", "6", "Z"},
                   {"GET", "ap"},
                   {"SETRANGE", "sr", "2", "Q"},
                   {"GET", "sr"},
                   {"SETRANGE", "sr2", "5", ""},
                   {"EXISTS", "sr2"},
                   {"SETRANGE", "ap", "100", ""},
                   {"SETRANGE", "ap", "-1", "x"},
                   {"SETRANGE", "ap", "536870911", "xx"},
                   {"APPEND", "ap", std::string(10, 'x')},
                   {"SETRANGE", "ap", "x", "x"}}),
         "+OK\r\n:4\r\n$4\r\naXYd\r\n:7\r\n$7\r\naXYd\0\0Z\r\n:3\r\n$3\r\n\0\0Q\r\n:0\r\n:0\r\n"
         ":7\r\n-ERR offset is out of range\r\n"
         "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n:17\r\n"s +
             not_integer},
        {"MSETNX",
         commands({{"MSETNX", "m1", "a", "m2", "b"},
                   {"MSETNX", "m2", "c", "m3", "d"},
                   {"MGET", "m1", "m2", "m3"},
                   {"MSETNX", "m1", "a", "m2"}}),
         ":1\r\n:0\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"
         "-ERR wrong number of arguments for 'msetnx' command\r\n"},
        {"INCRBY DECRBY and their overflow",
         commands({{"INCRBY", "n", "5"},
                   {"INCRBY", "n", "-10"},
                   {"DECRBY", "n", "3"},
                   {"DECRBY", "n", "-9223372036854775808"},
                   {"INCRBY", "n", "x"},
                   {"INCRBY", "n", "9223372036854775808"},
                   {"SET", "big", "9223372036854775800"},
                   {"INCRBY", "big", "8"},
                   {"INCRBY", "big", "7"},
                   {"DECRBY", "n", "9223372036854775807"},
                   {"DECRBY", "n", "1"},
                   {"DECRBY", "n", "9223372036854775807"},
                   {"SET", "s", "1.5"},
                   {"INCRBY", "s", "1"}}),
         ":5\r\n:-5\r\n:-8\r\n-ERR decrement would overflow\r\n" + not_integer + not_integer +
             "+OK\r\n" + overflow + ":9223372036854775807\r\n" + overflow + ":-9\r\n" + overflow +
             "+OK\r\n" + not_integer},
        {"INCRBYFLOAT, and never to inf or NaN",
         commands({{"INCRBYFLOAT", "f", "1.5"},
                   {"INCRBYFLOAT", "f", "0.1"},
                   {"INCRBYFLOAT", "f", "-1.6"},
                   {"INCRBYFLOAT", "f", "1e10"},
                   {"INCRBYFLOAT", "f", "abc"},
                   {"INCRBYFLOAT", "f", " 1"},
                   {"INCRBYFLOAT", "f", "inf"},
                   {"INCRBYFLOAT", "f", "nan"},
                   {"SET", "f", "1e4932"},
                   {"INCRBYFLOAT", "f", "1e4932"},
                   {"SET", "f", "5"},
                   {"INCRBYFLOAT", "f", "0x10"},
                   {"INCRBYFLOAT", "f", "+1"},
                   {"INCRBYFLOAT", "f", ".5"},
                   {"INCRBYFLOAT", "f", "3.0e3"},
                   {"SET", "f", "abc"},
                   {"INCRBYFLOAT", "f", "1"},
                   {"INCRBYFLOAT", "g", "-0"},
                   {"INCRBYFLOAT", "h", "1e5000"},
                   {"SET", "e", "1", "PXAT", "99999999999999"},
                   {"INCRBYFLOAT", "e", "0.25"},
                   {"PEXPIRETIME", "e"}}),
         "$3\r\n1.5\r\n$3\r\n1.6\r\n$1\r\n0\r\n$11\r\n10000000000\r\n" + not_float + not_float +
             "-ERR increment would produce NaN or Infinity\r\n" + not_float + "+OK\r\n" +
             "-ERR increment would produce NaN or Infinity\r\n" +
             "+OK\r\n$2\r\n21\r\n$2\r\n22\r\n$4\r\n22.5\r\n$6\r\n3022.5\r\n+OK\r\n" + not_float +
             "$1\r\n0\r\n" + not_float + "+OK\r\n$4\r\n1.25\r\n:99999999999999\r\n"},
    });
}

TEST_CASE("kv's added key and server commands answer as Redis 7.0 does", "[kv][process]") {
    check_cases({
        {"TYPE PERSIST PTTL EXPIRETIME",
         commands({{"TYPE", "nope"},
                   {"SET", "t", "v"},
                   {"TYPE", "t"},
                   {"PERSIST", "t"},
                   {"PEXPIREAT", "t", "99999999999999"},
                   {"PERSIST", "t"},
                   {"PERSIST", "nope"},
                   {"PTTL", "nope"},
                   {"PTTL", "t"},
                   {"EXPIRETIME", "t"},
                   {"EXPIRETIME", "nope"},
                   {"PEXPIRETIME", "nope"}}),
         "+none\r\n+OK\r\n+string\r\n:0\r\n:1\r\n:1\r\n:0\r\n:-2\r\n:-1\r\n:-1\r\n:-2\r\n:-2\r\n"},
        {"RENAME RENAMENX keep the expiry",
         commands({{"MSET", "a", "1", "b", "2", "c", "3"},
                   {"RENAME", "a", "z"},
                   {"RENAME", "nope", "z"},
                   {"RENAMENX", "nope", "z"},
                   {"RENAMENX", "z", "b"},
                   {"RENAMENX", "z", "y"},
                   {"RENAME", "y", "y"},
                   {"RENAMENX", "y", "y"},
                   {"RENAME", "q", "q"},
                   {"PEXPIREAT", "y", "99999999999999"},
                   {"RENAME", "y", "b"},
                   {"PEXPIRETIME", "b"},
                   {"MGET", "a", "b", "y", "z"}}),
         "+OK\r\n+OK\r\n-ERR no such key\r\n-ERR no such key\r\n:0\r\n:1\r\n+OK\r\n:0\r\n"
         "-ERR no such key\r\n:1\r\n+OK\r\n:99999999999999\r\n*4\r\n$-1\r\n$1\r\n1\r\n$-1\r\n"
         "$-1\r\n"},
        {"RANDOMKEY SELECT FLUSHDB",
         commands({{"RANDOMKEY"},
                   {"SET", "only", "1"},
                   {"RANDOMKEY"},
                   {"SELECT", "0"},
                   {"SELECT", "1"},  // Redis has 16 databases, kv 1
                   {"SELECT", "-1"},
                   {"SELECT", "x"},
                   {"SELECT", "99999999999"},
                   {"FLUSHDB", "x"},
                   {"FLUSHDB", "sync", "x"},
                   {"FLUSHDB", "ASYNC"},
                   {"RANDOMKEY"},
                   {"SET", "k", "v"},
                   {"FLUSHDB"},
                   {"DBSIZE"}}),
         "$-1\r\n+OK\r\n$4\r\nonly\r\n+OK\r\n-ERR DB index is out of range\r\n"
         "-ERR DB index is out of range\r\n-ERR value is not an integer or out of range\r\n"
         "-ERR value is out of range, value must between -2147483648 and 2147483647\r\n"
         "-ERR syntax error\r\n-ERR syntax error\r\n+OK\r\n$-1\r\n+OK\r\n+OK\r\n:0\r\n"},
        {"KEYS and SCAN's MATCH use Redis's glob",
         commands({{"MSET", "hello", "1", "hallo", "2", "hxllo", "3", "hllo", "4", "heeeello", "5",
                    "a*b", "6"},
                   {"KEYS", "h[a-b]llo"},
                   {"KEYS", "a\\*b"},
                   {"KEYS", "nomatch*"},
                   {"KEYS", "h[^ae]llo"},
                   {"SCAN", "0", "COUNT", "100", "TYPE", "string", "MATCH", "a*"},
                   {"SCAN", "0", "COUNT", "100", "MATCH", "hee*"},
                   {"SCAN", "0", "TYPE", "list"},
                   // Redis's answer since its fix for CVE-2024-31228: no match, no crash.
                   {"SET", std::string(50000, 'a'), "1"},
                   {"KEYS",
                    [] {
                        std::string stars;
                        for (int i = 0; i < 50000; ++i) stars += "*?";
                        return stars;
                    }()},
                   {"KEYS"}}),
         "+OK\r\n*1\r\n$5\r\nhallo\r\n*1\r\n$3\r\na*b\r\n*0\r\n*1\r\n$5\r\nhxllo\r\n"
         "*2\r\n$1\r\n0\r\n*1\r\n$3\r\na*b\r\n*2\r\n$1\r\n0\r\n*1\r\n$8\r\nheeeello\r\n"
         "*2\r\n$1\r\n0\r\n*0\r\n+OK\r\n*0\r\n"
         "-ERR wrong number of arguments for 'keys' command\r\n"},
        {"SCAN's argument errors",
         commands({{"SCAN", "0", "COUNT", "0"},
                   {"SCAN", "x"},
                   {"SCAN", "-1"},
                   {"SCAN", " 1"},
                   {"SCAN", "0", "MATCH"},
                   {"SCAN", "0", "FOO", "1"},
                   {"SCAN", "0", "COUNT", "x"},
                   {"SCAN", "18446744073709551616"}}),
         "-ERR syntax error\r\n-ERR invalid cursor\r\n*2\r\n$1\r\n0\r\n*0\r\n"
         "-ERR invalid cursor\r\n-ERR syntax error\r\n-ERR syntax error\r\n"
         "-ERR value is not an integer or out of range\r\n-ERR invalid cursor\r\n"},
        {"TIME INFO HELLO errors",
         commands({{"TIME", "x"},
                   {"SELECT"},
                   {"HELLO", "3"},  // Redis speaks RESP3, kv not
                   {"HELLO", "4"},
                   {"HELLO", "x"},
                   {"HELLO", "2", "FOO"},
                   {"HELLO", "2", "SETNAME", "my name"},
                   {"HELLO", "2", "AUTH", "bob", "x"},
                   {"INFO", "nosuch"}}),
         "-ERR wrong number of arguments for 'time' command\r\n"
         "-ERR wrong number of arguments for 'select' command\r\n"
         "-NOPROTO unsupported protocol version\r\n-NOPROTO unsupported protocol version\r\n"
         "-ERR Protocol version is not an integer or out of range\r\n"
         "-ERR Syntax error in HELLO option 'FOO'\r\n"
         "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
         "-WRONGPASS invalid username-password pair or user is disabled.\r\n$0\r\n\r\n"},
    });
}

TEST_CASE("python3-redis's client gets Redis's answers from kv, SCAN under churn included",
          "[kv][process]") {
    // Debian's python3-redis installs for Debian's python3; prefer it to another one on PATH.
    auto python = ::access("/usr/bin/python3", X_OK) == 0 ? std::string("/usr/bin/python3")
                                                          : require_tool("python3");
    const char* source = std::getenv("NETLOOP_SOURCE_DIR");
    REQUIRE(source != nullptr);
    scratch_dir dir;
    auto probe = run_tool(dir, {python, "-c", "import redis"});
    if (probe.status != 0) {
        FAIL(
            "python3 cannot import redis: install the Debian package python3-redis "
            "(apt-get install -y python3-redis; the setup script does)\n"
            << probe.output);
    }
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto r = run_tool(dir, {python, std::string(source) + "/test/kv_compat.py", kv.port_text()});
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output == "ok\n");
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

TEST_CASE("kv answers redis-cli's added commands: SETEX, GETEX, INCRBYFLOAT, --scan, INFO, HELLO",
          "[kv][process]") {
    auto cli = require_tool("redis-cli");
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    auto redis = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {cli, "-h", "127.0.0.1", "-p", kv.port_text()});
        auto r = run_tool(dir, args);
        CHECK(r.status == 0);
        return r.output;
    };
    CHECK(redis({"SETEX", "s", "100", "v"}) == "OK\n");
    CHECK(redis({"GETEX", "s", "PXAT", "99999999999999"}) == "v\n");
    CHECK(redis({"PEXPIRETIME", "s"}) == "99999999999999\n");
    CHECK(redis({"SET", "s", "w", "GET", "KEEPTTL"}) == "v\n");
    CHECK(redis({"EXPIRE", "s", "100", "NX"}) == "0\n");
    CHECK(redis({"INCRBYFLOAT", "f", "10.5"}) == "10.5\n");
    CHECK(redis({"INCRBYFLOAT", "f", "-0.25"}) == "10.25\n");
    CHECK(redis({"APPEND", "f", "x"}) == "6\n");
    CHECK(redis({"GETRANGE", "f", "0", "1"}) == "10\n");
    CHECK(redis({"TYPE", "f"}) == "string\n");
    CHECK(redis({"RENAME", "f", "g"}) == "OK\n");
    CHECK(redis({"PING", "x", "y"}) == "ERR wrong number of arguments for 'ping' command\n\n");
    CHECK(redis({"SELECT", "1"}) == "ERR DB index is out of range\n\n");
    CHECK(redis({"HELLO", "3"}) == "NOPROTO unsupported protocol version\n\n");
    CHECK(redis({"HELLO", "2"}).find("proto\n2\n") != std::string::npos);
    auto time = redis({"TIME"});
    CHECK(std::count(time.begin(), time.end(), '\n') == 2);
    auto info = redis({"INFO", "server"});
    CHECK(info.find("redis_version:7.") != std::string::npos);
    CHECK(info.find("tcp_port:" + kv.port_text() + "\r\n") != std::string::npos);
    CHECK(redis({"INFO", "clients"}).find("connected_clients:1\r\n") != std::string::npos);

    // --scan walks the whole keyspace with SCAN's cursor.
    CHECK(redis({"FLUSHDB"}) == "OK\n");
    std::vector<std::string> mset{"MSET"};
    for (int i = 0; i < 500; ++i) {
        mset.push_back("user:" + std::to_string(i));
        mset.push_back("v");
        mset.push_back("other:" + std::to_string(i));
        mset.push_back("v");
    }
    CHECK(redis(mset) == "OK\n");
    auto scanned = redis({"--scan", "--pattern", "user:*"});
    std::vector<std::string> lines;
    std::istringstream in(scanned);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    std::sort(lines.begin(), lines.end());
    std::vector<std::string> expected;
    for (int i = 0; i < 500; ++i) expected.push_back("user:" + std::to_string(i));
    std::sort(expected.begin(), expected.end());
    CHECK(lines == expected);
    CHECK(kv.stop());
    CHECK(kv.errors().empty());
}

namespace {

// Connects to `to` until the connect is refused (the server stopped listening), at most 10 s.
task<bool> refused_soon(netloop::address to) {
    for (int i = 0; i < 1000; ++i) {
        auto failure = co_await netloop::test::failure_of(netloop::connect(to, 5s));
        if (failure.first == errc::connect_failed && failure.second == ECONNREFUSED) co_return true;
        co_await netloop::test::sleep_for(10ms);
    }
    co_return false;
}

}  // namespace

TEST_CASE(
    "on SIGTERM kv closes a client idle between commands at once, lets one in the middle of a SET "
    "finish it and get +OK, then exits 0",
    "[kv][process][drain]") {
    scratch_dir dir;
    kv_process kv(dir);
    REQUIRE(kv.port() != 0);
    struct outcome {
        std::string pong;
        bool refused = false;
        std::string idle_rest = "not read";
        bool idle_closed_first = false;
        std::string reply;
        std::string busy_rest = "not read";
    };
    auto o = run_bounded(
        [&]() -> task<outcome> {
            outcome o;
            auto idle = co_await netloop::connect(kv.address(), 5s);
            o.pong = co_await ask(idle, "PING\r\n", 7);
            auto busy = co_await netloop::connect(kv.address(), 5s);
            std::string set = "*3\r\n$3\r\nSET\r\n$8\r\ngreeting\r\n$5\r\nhello\r\n";
            co_await busy.write(std::string_view(set).substr(0, 25), 5s);
            kv.signal(SIGTERM);
            o.refused = co_await refused_soon(kv.address());  // the drain has begun
            // kv's drain timeout is 30 s: only ending the idle client at once ends this read.
            o.idle_rest = co_await read_to_end(idle);
            o.idle_closed_first = true;
            co_await netloop::test::sleep_for(600ms);  // a pause in the middle of the command
            co_await busy.write(std::string_view(set).substr(25), 5s);
            o.reply = co_await read_text(busy, 5);
            o.busy_rest = co_await read_to_end(busy);
            co_return o;
        },
        30s);
    CHECK(o.pong == "+PONG\r\n");
    CHECK(o.refused);
    CHECK(o.idle_rest.empty());
    CHECK(o.idle_closed_first);
    CHECK(o.reply == "+OK\r\n");
    CHECK(o.busy_rest.empty());  // closed at the boundary after its reply
    CHECK(kv.exited_with(0, 10s));
}

TEST_CASE("kv over --maxclients answers Redis's -ERR max number of clients reached and closes",
          "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir, {"--maxclients", "2"});
    REQUIRE(kv.port() != 0);
    struct outcome {
        std::string first, second, third, after_leave;
    };
    auto o = run_bounded([&]() -> task<outcome> {
        outcome o;
        auto a = co_await netloop::connect(kv.address(), 5s);
        auto b = co_await netloop::connect(kv.address(), 5s);
        o.first = co_await ask(a, "PING\r\n", 7);
        o.second = co_await ask(b, "PING\r\n", 7);
        auto c = co_await netloop::connect(kv.address(), 5s);
        o.third = co_await read_to_end(c);
        a.close();
        // Once a client left, a new one is served again.
        for (int i = 0; i < 100; ++i) {
            auto d = co_await netloop::connect(kv.address(), 5s);
            o.after_leave = co_await ask(d, "PING\r\n", 7);
            if (o.after_leave == "+PONG\r\n") break;
            co_await netloop::test::sleep_for(10ms);
        }
        co_return o;
    });
    CHECK(o.first == "+PONG\r\n");
    CHECK(o.second == "+PONG\r\n");
    CHECK(o.third == "-ERR max number of clients reached\r\n");
    CHECK(kv.stop());
}

TEST_CASE("kv --timeout 1 closes a client idle for a second, as Redis's timeout does",
          "[kv][process]") {
    scratch_dir dir;
    kv_process kv(dir, {"--timeout", "1"});
    REQUIRE(kv.port() != 0);
    auto rest = run_bounded([&]() -> task<std::string> {
        auto c = co_await netloop::connect(kv.address(), 5s);
        (void)co_await ask(c, "PING\r\n", 7);
        co_return co_await read_to_end(c);  // each read bounded by 10 s
    });
    CHECK(rest.empty());
    CHECK(kv.stop());
}

TEST_CASE("kv rejects a bad flag with exit status 2 and a line naming it", "[kv][process]") {
    for (auto flags :
         {std::vector<std::string>{"--maxclients", "x"},
          std::vector<std::string>{"--maxclients", "0"},
          std::vector<std::string>{"--timeout", "-1"}, std::vector<std::string>{"--bogus"}}) {
        scratch_dir dir;
        kv_process kv(dir, flags);
        CAPTURE(flags[0]);
        CHECK(kv.port() == 0);
        CHECK(kv.exited_with(2, 10s));
        CHECK(kv.errors().find(flags[0]) != std::string::npos);
    }
}
