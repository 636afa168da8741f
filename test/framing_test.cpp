// SPDX-License-Identifier: MIT
// Framing: read_exactly, read_until and the buffered reader, against real sockets.
#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::errc;
using netloop::task;
using netloop::test::make_pair_over;
using netloop::test::run_bounded;

namespace {

task<> write_in_pieces(netloop::connection& c, std::string data, std::size_t piece) {
    for (std::size_t at = 0; at < data.size(); at += piece) {
        co_await c.write(std::string_view(data).substr(at, piece), 5s);
        co_await netloop::test::yield();  // separate segments, as far as the loop goes
    }
}

std::string text(std::span<const std::byte> b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

TEST_CASE("read_until() reassembles frames split across 1-byte writes", "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    auto delimiter = GENERATE(as<std::string>{}, "\n", "\r\n", "--END--");
    CAPTURE(transport, delimiter);
    auto frames = run_bounded([&]() -> task<std::vector<std::string>> {
        auto pair = co_await make_pair_over(transport);
        std::string data = "alpha" + delimiter + "" + delimiter + "gamma gamma" + delimiter;
        netloop::spawn(write_in_pieces(pair.client_side, data, 1));
        std::vector<std::string> out;
        for (int i = 0; i < 3; ++i) {
            auto frame = co_await pair.server_side.read_until(delimiter, 64, 5s);
            out.emplace_back(frame);
        }
        co_return out;
    });
    CHECK(frames == std::vector<std::string>{"alpha", "", "gamma gamma"});
}

TEST_CASE("many frames in one write come out one by one, and the rest goes to read()",
          "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [frames, rest] =
        run_bounded([&]() -> task<std::pair<std::vector<std::string>, std::string>> {
            auto pair = co_await make_pair_over(transport);
            std::string data;
            for (int i = 0; i < 1000; ++i) data += "line " + std::to_string(i) + "\n";
            data += "tail bytes";
            co_await pair.client_side.write(data, 5s);
            std::vector<std::string> out;
            for (int i = 0; i < 1000; ++i) {
                auto frame = co_await pair.server_side.read_until("\n", 100, 5s);
                out.emplace_back(frame);
            }
            std::array<std::byte, 10> buf;
            co_await pair.server_side.read_exactly(buf, 5s);
            co_return std::pair<std::vector<std::string>, std::string>{out, text(buf)};
        });
    REQUIRE(frames.size() == 1000);
    CHECK(frames.front() == "line 0");
    CHECK(frames.back() == "line 999");
    CHECK(rest == "tail bytes");
}

TEST_CASE(
    "a frame of exactly max_length passes; one byte more is message_too_large and loses "
    "nothing",
    "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [exact, over, still_buffered,
          after] = run_bounded([&]() -> task<std::tuple<std::string, errc, std::size_t,
                                                        std::string>> {
        auto pair = co_await make_pair_over(transport);
        std::string fits(16, 'a');
        std::string too_long(17, 'b');
        co_await pair.client_side.write(fits + "\n" + too_long + "\nnext\n", 5s);
        std::string exact(co_await pair.server_side.read_until("\n", 16, 5s));
        errc over{};
        try {
            (void)co_await pair.server_side.read_until("\n", 16, 5s);
        } catch (const netloop::error& e) {
            over = e.kind();
        }
        // Nothing was consumed: the long line's bytes are all buffered, and the caller can
        // skip them (drop what is buffered, then the rest of the line) and go on.
        std::size_t size = pair.server_side.buffered().size();
        pair.server_side.consume(size);
        std::string rest_of_long(co_await pair.server_side.read_until("\n", 16, 5s));
        std::string next(co_await pair.server_side.read_until("\n", 16, 5s));
        if (!rest_of_long.empty()) next = "unexpected rest: " + rest_of_long;
        co_return std::tuple<std::string, errc, std::size_t, std::string>{exact, over, size, next};
    });
    CHECK(exact == std::string(16, 'a'));
    CHECK(over == errc::message_too_large);
    CHECK(still_buffered == 17);
    CHECK(after == "next");
}

TEST_CASE("a long line without a delimiter is message_too_large once max_length is exceeded",
          "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto kind = run_bounded([&]() -> task<errc> {
        auto pair = co_await make_pair_over(transport);
        netloop::spawn(write_in_pieces(pair.client_side, std::string(100000, 'x'), 7000));
        try {
            (void)co_await pair.server_side.read_until("\r\n", 4096, 5s);
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return errc{};
    });
    CHECK(kind == errc::message_too_large);
}

TEST_CASE("a delimiter split across reads and across the buffer's growth is found", "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    auto frame_size = GENERATE(std::size_t{4094}, std::size_t{4095}, std::size_t{4096},
                               std::size_t{8191}, std::size_t{20000});
    CAPTURE(transport, frame_size);
    auto got = run_bounded([&]() -> task<std::size_t> {
        auto pair = co_await make_pair_over(transport);
        std::string data(frame_size, 'z');
        data += "\r\n";
        // Split right inside the delimiter.
        co_await pair.client_side.write(std::string_view(data).substr(0, frame_size + 1), 5s);
        netloop::spawn(write_in_pieces(pair.client_side, "\nafter\r\n", 1));
        auto frame = co_await pair.server_side.read_until("\r\n", 1 << 20, 5s);
        std::size_t size = frame.size();
        auto next = co_await pair.server_side.read_until("\r\n", 16, 5s);
        co_return next == "after" ? size : 0;
    });
    CHECK(got == frame_size);
}

TEST_CASE(
    "EOF in the middle of a frame is connection_closed and the partial frame stays "
    "buffered",
    "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [kind, partial] = run_bounded([&]() -> task<std::pair<errc, std::string>> {
        auto pair = co_await make_pair_over(transport);
        co_await pair.client_side.write(std::string_view("complete\npartial"), 5s);
        pair.client_side.close();
        auto first = co_await pair.server_side.read_until("\n", 64, 5s);
        if (first != "complete") co_return std::pair<errc, std::string>{errc{}, ""};
        try {
            (void)co_await pair.server_side.read_until("\n", 64, 5s);
        } catch (const netloop::error& e) {
            co_return std::pair<errc, std::string>{e.kind(), text(pair.server_side.buffered())};
        }
        co_return std::pair<errc, std::string>{errc{}, ""};
    });
    CHECK(kind == errc::connection_closed);
    CHECK(partial == "partial");
}

TEST_CASE("read_exactly() fills the buffer across many small writes, and times out as one call",
          "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [ok, kind] = run_bounded([&]() -> task<std::pair<bool, errc>> {
        auto pair = co_await make_pair_over(transport);
        auto data = netloop::test::pattern(50000, 5);
        netloop::spawn([](netloop::connection& c, std::vector<std::byte> d) -> task<> {
            for (std::size_t at = 0; at < d.size(); at += 999) {
                co_await c.write(std::span<const std::byte>(d).subspan(
                                     at, std::min<std::size_t>(999, d.size() - at)),
                                 5s);
            }
        }(pair.client_side, data));
        std::vector<std::byte> got(data.size());
        co_await pair.server_side.read_exactly(got, 5s);
        std::array<std::byte, 4> more;
        errc kind{};
        try {
            co_await pair.server_side.read_exactly(more, 50ms);
        } catch (const netloop::error& e) {
            kind = e.kind();
        }
        co_return std::pair<bool, errc>{got == data, kind};
    });
    CHECK(ok);
    CHECK(kind == errc::timeout);
}

TEST_CASE("a parser consumes from buffered() with fill(), without a copy per frame", "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    // Length-prefixed records: one byte of length, then the payload.
    auto records = run_bounded([&]() -> task<std::vector<std::string>> {
        auto pair = co_await make_pair_over(transport);
        std::string wire;
        for (const std::string& r :
             std::vector<std::string>{"a", "bb", "", "dddd", std::string(200, 'e')}) {
            wire += static_cast<char>(r.size());
            wire += r;
        }
        netloop::spawn(write_in_pieces(pair.client_side, wire, 3));
        std::vector<std::string> out;
        while (out.size() < 5) {
            auto b = pair.server_side.buffered();
            if (!b.empty() && b.size() >= 1 + static_cast<std::size_t>(b[0])) {
                std::size_t n = static_cast<std::size_t>(b[0]);
                out.push_back(text(b.subspan(1, n)));
                pair.server_side.consume(1 + n);
                continue;
            }
            (void)co_await pair.server_side.fill(5s);
        }
        co_return out;
    });
    REQUIRE(records.size() == 5);
    CHECK(records[1] == "bb");
    CHECK(records[2].empty());
    CHECK(records[4] == std::string(200, 'e'));
}

TEST_CASE("fill() refuses to grow past max_buffered", "[framing]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto kind = run_bounded([&]() -> task<errc> {
        auto pair = co_await make_pair_over(transport);
        co_await pair.client_side.write(std::string(100, 'q'), 5s);
        while (pair.server_side.buffered().size() < 64) {
            (void)co_await pair.server_side.fill(5s, 64);
        }
        try {
            (void)co_await pair.server_side.fill(5s, 64);
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return errc{};
    });
    CHECK(kind == errc::message_too_large);
}

TEST_CASE("the frame of a 100 KiB line stays intact after buffered() is called", "[framing]") {
    // The frame is a view into the connection's buffer, valid until the next read; buffered()
    // only observes the buffer and must not free or move what the frame points into.
    std::string line(100 * 1024, '\0');
    for (std::size_t i = 0; i < line.size(); ++i) line[i] = static_cast<char>('a' + i % 26);
    struct result {
        std::string frame;
        std::size_t buffered_after = 1;
    };
    auto r = run_bounded([&]() -> task<result> {
        auto pair = co_await netloop::test::make_pair();
        bool written = false;
        netloop::spawn([](netloop::connection& c, std::string data, bool& done) -> task<> {
            co_await c.write(data, 10s);
            done = true;
        }(pair.client_side, line + "\n", written));
        auto frame = co_await pair.server_side.read_until("\n", 1 << 20, 10s);
        result r;
        r.buffered_after = pair.server_side.buffered().size();
        r.frame.assign(frame.data(), frame.size());  // touches every byte of the view
        for (int i = 0; i < 1000 && !written; ++i) co_await netloop::test::yield();
        co_return r;
    });
    CHECK(r.buffered_after == 0);
    CHECK(r.frame.size() == line.size());
    CHECK(r.frame == line);
}
