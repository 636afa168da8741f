// SPDX-License-Identifier: MIT
// The chat sample as a real process: broadcast, per-sender order, slow and long-line clients,
// threads, shutdown.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/process.hpp"

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using netloop::errc;
using netloop::task;
using netloop::test::child_process;
using netloop::test::run_bounded;

namespace {

constexpr netloop::duration patience = 10s;  // any one read or write of a client

// Starts chat on 127.0.0.1:0 with `threads` loops. Under ASan, a small quarantine keeps freed
// lines from counting as resident memory.
std::unique_ptr<child_process> start_chat(const std::string& threads) {
    const char* asan = std::getenv("ASAN_OPTIONS");
    std::string asan_options =
        "ASAN_OPTIONS=" + std::string(asan != nullptr ? asan : "") + ":quarantine_size_mb=4";
    return std::make_unique<child_process>(
        std::vector<std::string>{netloop::test::sample_path("chat"), "127.0.0.1:0", "--threads",
                                 threads},
        std::vector<std::string>{asan_options});
}

// One client of the room, as the test sees it.
struct member {
    netloop::connection conn;
    std::string name;  // "127.0.0.1:port", the prefix of its lines at the others
};

// A line as the others receive it: who sent it and what it said.
struct said {
    std::string from;
    std::string text;
};

// The next line at `m`, split into sender and text.
task<said> read_line(member& m, netloop::duration timeout) {
    auto line = co_await m.conn.read_until("\n", 64 * 1024, timeout);
    auto colon = line.find(": ");
    if (colon == std::string_view::npos) co_return said{"", std::string(line)};
    co_return said{std::string(line.substr(0, colon)), std::string(line.substr(colon + 2))};
}

bool is_sync(const said& s) { return s.text.starts_with("sync "); }

// The next line at `m` that is not one of join()'s "sync" lines.
task<said> read_said(member& m) {
    for (;;) {
        auto s = co_await read_line(m, patience);
        if (!is_sync(s)) co_return s;
    }
}

// Connects `n` clients and returns once all of them are in the room. A client joins the room
// when its handler starts on its loop, which may be after the connect returned; so the last
// client says "sync <round>" until every other one has heard it (a short read timeout only
// decides when the next round starts). read_said() skips the extra sync lines later.
task<std::vector<member>> join(std::uint16_t port, std::size_t n) {
    std::vector<member> room;
    for (std::size_t i = 0; i < n; ++i) {
        auto c = co_await netloop::connect(netloop::address::ipv4("127.0.0.1", port), patience);
        auto name = c.local_address().to_string();
        room.push_back(member{std::move(c), name});
    }
    auto& last = room.back();
    std::vector<bool> heard(n - 1, false);
    for (int round = 0; std::find(heard.begin(), heard.end(), false) != heard.end(); ++round) {
        if (round == 100) throw std::runtime_error("join: some client never heard the last one");
        co_await last.conn.write("sync " + std::to_string(round) + "\n", patience);
        for (std::size_t i = 0; i + 1 < n; ++i) {
            if (heard[i]) continue;
            try {
                auto s = co_await read_line(room[i], 200ms);
                if (s.from != last.name || !is_sync(s)) {
                    throw std::runtime_error("join: " + room[i].name + " read '" + s.text + "'");
                }
                heard[i] = true;
            } catch (const netloop::error& e) {
                if (e.kind() != errc::timeout) throw;
            }
        }
    }
    co_return room;
}

// Reads until the server ends the connection; returns how it ended and the bytes read.
struct ending {
    errc kind{};
    std::size_t bytes = 0;
    std::string tail;  // the last bytes read
};

task<ending> read_to_end(netloop::connection& c) {
    ending out;
    std::array<std::byte, 65536> buf;
    for (;;) {
        std::size_t n = 0;
        try {
            n = co_await c.read(buf, patience);
        } catch (const netloop::error& e) {
            out.kind = e.kind();
            co_return out;
        }
        out.bytes += n;
        out.tail.append(reinterpret_cast<const char*>(buf.data()), n);
        if (out.tail.size() > 256) out.tail.erase(0, out.tail.size() - 256);
    }
}

// Wakes the one task waiting on it. The waiter checks its condition first, so on the one loop
// thread no wake-up is lost.
class event {
public:
    explicit event(asio::any_io_executor ex) : timer_(std::move(ex)) {}
    void notify() { timer_.cancel(); }
    // Waits for notify(); throws if none comes within `limit` (no progress: a failure).
    task<> wait(netloop::duration limit) {
        timer_.expires_after(limit);
        asio::error_code ec;
        co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (!ec) throw std::runtime_error("no progress within the limit");
    }

private:
    asio::steady_timer timer_;
};

// The traffic of a bulk test: per sender, the lines sent and, per receiver, the lines received.
struct traffic {
    std::size_t lines = 0;                         // per sender
    std::size_t line_size = 0;                     // bytes of each line's text
    std::size_t window = 0;                        // lines a sender may have unread at any receiver
    std::vector<std::size_t> sent;                 // by sender
    std::vector<std::vector<std::size_t>> got;     // [receiver][sender]
    std::vector<std::unique_ptr<event>> can_send;  // by sender
    std::vector<std::string> errors;
    child_process* chat = nullptr;  // when set, RSS is sampled while sending
    long peak_rss_kib = 0;
};

// "<seq> " padded to `size` bytes.
std::string numbered(std::size_t seq, std::size_t size) {
    auto s = std::to_string(seq) + " ";
    s.resize(std::max(size, s.size()), 'x');
    return s;
}

// Sends `t.lines` numbered lines from room[me], at most `t.window` ahead of the slowest of
// `receivers`.
task<> send_lines(std::vector<member>& room, std::size_t me, std::vector<std::size_t> receivers,
                  traffic& t) {
    for (std::size_t seq = 0; seq < t.lines; ++seq) {
        for (;;) {
            std::size_t slowest = t.lines;
            for (auto r : receivers) slowest = std::min(slowest, t.got[r][me]);
            if (seq - slowest < t.window) break;
            co_await t.can_send[me]->wait(patience);
        }
        auto line = numbered(seq, t.line_size) + "\n";
        co_await room[me].conn.write(line, patience);
        t.sent[me] = seq + 1;
        if (t.chat != nullptr && seq % 64 == 0) {
            t.peak_rss_kib = std::max(t.peak_rss_kib, t.chat->rss_kib());
        }
    }
}

// Reads at room[me] until every one of `senders` has been heard `t.lines` times, checking that
// each sender's lines come in order, whole, and that nobody else speaks.
task<> receive_lines(std::vector<member>& room, std::size_t me, std::vector<std::size_t> senders,
                     traffic& t) {
    std::map<std::string, std::size_t> index;
    for (auto s : senders) index[room[s].name] = s;
    auto all_heard = [&] {
        return std::all_of(senders.begin(), senders.end(),
                           [&](std::size_t s) { return t.got[me][s] == t.lines; });
    };
    while (!all_heard()) {
        auto line = co_await read_said(room[me]);
        auto it = index.find(line.from);
        if (it == index.end()) {
            t.errors.push_back(room[me].name + " heard '" + line.from + ": " + line.text + "'");
            co_return;
        }
        auto s = it->second;
        auto expected = numbered(t.got[me][s], t.line_size);
        if (line.text != expected) {
            t.errors.push_back(room[me].name + " heard from " + line.from + " '" +
                               line.text.substr(0, 20) + "' where '" + expected.substr(0, 20) +
                               "' was due");
            co_return;
        }
        ++t.got[me][s];
        t.can_send[s]->notify();
    }
}

std::string joined(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
}

traffic make_traffic(std::size_t members, std::size_t lines, std::size_t line_size,
                     std::size_t window, asio::any_io_executor ex) {
    traffic t;
    t.lines = lines;
    t.line_size = line_size;
    t.window = window;
    t.sent.assign(members, 0);
    t.got.assign(members, std::vector<std::size_t>(members, 0));
    for (std::size_t i = 0; i < members; ++i) t.can_send.push_back(std::make_unique<event>(ex));
    return t;
}

}  // namespace

TEST_CASE("a line reaches every other client, and not its sender", "[chat]") {
    auto threads = GENERATE(as<std::string>{}, "1", "2");
    CAPTURE(threads);
    auto chat = start_chat(threads);
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    struct seen {
        std::vector<std::string> a, b, c;
        std::string a_name, b_name;
    };
    auto s = run_bounded([&]() -> task<seen> {
        auto room = co_await join(port, 3);
        auto& a = room[0];
        auto& b = room[1];
        auto& c = room[2];
        co_await a.conn.write(std::string_view("hello, room\n"), patience);
        seen out;
        out.a_name = a.name;
        out.b_name = b.name;
        for (auto* m : {&b, &c}) {
            auto line = co_await read_said(*m);
            (m == &b ? out.b : out.c).push_back(line.from + ": " + line.text);
        }
        // b answers; a's next line is b's answer, so a never got its own line back.
        co_await b.conn.write(std::string_view("hi a\n"), patience);
        for (auto* m : {&a, &c}) {
            auto line = co_await read_said(*m);
            (m == &a ? out.a : out.c).push_back(line.from + ": " + line.text);
        }
        co_return out;
    });
    CHECK(s.a == std::vector<std::string>{s.b_name + ": hi a"});
    CHECK(s.b == std::vector<std::string>{s.a_name + ": hello, room"});
    CHECK(s.c == std::vector<std::string>{s.a_name + ": hello, room", s.b_name + ": hi a"});

    chat->signal(SIGTERM);
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE("each receiver gets each sender's lines in the order they were sent", "[chat]") {
    auto threads = GENERATE(as<std::string>{}, "1", "2");
    CAPTURE(threads);
    auto chat = start_chat(threads);
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    auto t = run_bounded([&]() -> task<traffic> {
        auto room = co_await join(port, 3);
        auto ex = co_await asio::this_coro::executor;
        auto t = make_traffic(3, 200, 12, 200, ex);  // all 200 at once: no pacing
        auto everyone = send_lines(room, 0, {1, 2}, t) && send_lines(room, 1, {0, 2}, t) &&
                        send_lines(room, 2, {0, 1}, t) && receive_lines(room, 0, {1, 2}, t) &&
                        receive_lines(room, 1, {0, 2}, t) && receive_lines(room, 2, {0, 1}, t);
        co_await std::move(everyone);
        co_return std::move(t);
    });
    INFO(joined(t.errors));
    CHECK(t.errors.empty());
    CHECK(t.got ==
          std::vector<std::vector<std::size_t>>{{0, 200, 200}, {200, 0, 200}, {200, 200, 0}});

    chat->signal(SIGTERM);
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE(
    "a client that stops reading is disconnected, the server's memory stays bounded, and the "
    "others get everything",
    "[chat]") {
    auto threads = GENERATE(as<std::string>{}, "1", "2");
    CAPTURE(threads);
    auto chat = start_chat(threads);
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    // a and b send 25 MiB each, in 2 KiB lines, and read each other's; c reads nothing. Each
    // sender stays at most 64 lines (128 KiB) ahead of its reader, below chat's 256 KiB queue,
    // so a and b are never the slow ones however the machine schedules the two processes.
    constexpr std::size_t line_size = 2048;
    constexpr std::size_t lines = 25 * 1024 * 1024 / line_size;
    constexpr long bound_kib = 64 * 1024;  // RSS growth allowed while 50 MiB pass through

    long base_kib = 0;
    ending c_end;
    auto t = run_bounded(
        [&]() -> task<traffic> {
            auto room = co_await join(port, 3);  // c (room[2]) said "sync"
            base_kib = chat->rss_kib();
            auto ex = co_await asio::this_coro::executor;
            auto t = make_traffic(3, lines, line_size - 1, 64, ex);
            t.chat = chat.get();
            auto a_and_b = send_lines(room, 0, {1}, t) && send_lines(room, 1, {0}, t) &&
                           receive_lines(room, 0, {1}, t) && receive_lines(room, 1, {0}, t);
            co_await std::move(a_and_b);
            c_end = co_await read_to_end(room[2].conn);
            co_return std::move(t);
        },
        150s);
    INFO(joined(t.errors));
    CHECK(t.errors.empty());
    CHECK(t.got[0][1] == lines);
    CHECK(t.got[1][0] == lines);

    INFO("chat RSS " << base_kib << " KiB before, " << t.peak_rss_kib << " KiB at most during");
    CHECK(t.peak_rss_kib - base_kib < bound_kib);

    // c was cut off long before the 50 MiB: EOF or a reset, the farewell line if it got through.
    CAPTURE(c_end.bytes, c_end.tail);
    CHECK((c_end.kind == errc::connection_closed || c_end.kind == errc::connection_reset));
    CHECK(c_end.bytes < 2 * lines * line_size);

    chat->signal(SIGTERM);
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE("a line over 4 KiB costs its sender the connection, and the room goes on", "[chat]") {
    auto threads = GENERATE(as<std::string>{}, "1", "2");
    CAPTURE(threads);
    auto chat = start_chat(threads);
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    struct outcome {
        std::string notice;
        errc after{};
        std::string b_heard;
        std::string a_name;
    };
    auto o = run_bounded([&]() -> task<outcome> {
        auto room = co_await join(port, 3);
        auto& a = room[0];
        auto& b = room[1];
        auto& c = room[2];
        outcome out;
        out.a_name = a.name;
        co_await c.conn.write(std::string(4097, 'x') + "\n", patience);
        out.notice = std::string(co_await c.conn.read_until("\n", 4096, patience));
        try {
            (void)co_await c.conn.read_until("\n", 4096, patience);
        } catch (const netloop::error& e) {
            out.after = e.kind();
        }
        co_await a.conn.write(std::string_view("still here\n"), patience);
        auto line = co_await read_said(b);
        out.b_heard = line.from + ": " + line.text;
        co_return out;
    });
    CHECK(o.notice == "* line too long");
    CHECK(o.after == errc::connection_closed);
    CHECK(o.b_heard == o.a_name + ": still here");

    chat->signal(SIGTERM);
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE("with --threads 2, clients on different loops hear each other", "[chat]") {
    auto chat = start_chat("2");
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    // hand_off deals connections to the two loops in turn: 0 and 2 on one, 1 and 3 on the other.
    constexpr std::size_t n = 4;
    auto [heard, names] = run_bounded(
        [&]() -> task<std::pair<std::vector<std::vector<std::string>>, std::vector<std::string>>> {
            auto room = co_await join(port, n);
            std::vector<std::string> names;
            for (auto& m : room) {
                names.push_back(m.name);
                co_await m.conn.write("from " + m.name + "\n", patience);
            }
            std::vector<std::vector<std::string>> heard(n);
            for (std::size_t i = 0; i < n; ++i) {
                for (std::size_t k = 0; k + 1 < n; ++k) {
                    auto line = co_await read_said(room[i]);
                    heard[i].push_back(line.from + ": " + line.text);
                }
            }
            co_return std::pair{heard, names};
        });
    for (std::size_t i = 0; i < n; ++i) {
        std::vector<std::string> expected;
        for (std::size_t k = 0; k < n; ++k) {
            if (k != i) expected.push_back(names[k] + ": from " + names[k]);
        }
        std::sort(heard[i].begin(), heard[i].end());
        std::sort(expected.begin(), expected.end());
        CAPTURE(i);
        CHECK(heard[i] == expected);
    }

    chat->signal(SIGTERM);
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE("SIGTERM and SIGINT tell connected clients the server is shutting down, and chat exits 0",
          "[chat]") {
    auto signo = GENERATE(SIGTERM, SIGINT);
    auto threads = GENERATE(as<std::string>{}, "1", "2");
    CAPTURE(signo, threads);
    auto chat = start_chat(threads);
    auto port = chat->announced_port();
    REQUIRE(port != 0);

    auto endings = run_bounded([&]() -> task<std::vector<ending>> {
        auto room = co_await join(port, 3);
        chat->signal(signo);
        std::vector<ending> endings;
        for (auto& m : room) {
            auto e = co_await read_to_end(m.conn);  // the drain says goodbye to idle clients
            endings.push_back(e);
        }
        co_return endings;
    });
    for (const auto& e : endings) {
        CAPTURE(e.tail);
        CHECK(e.kind == errc::connection_closed);
        CHECK(e.tail.ends_with("* server shutting down\n"));
    }
    CHECK(chat->exited_with(0, 15s));
}

TEST_CASE("chat with bad arguments exits 2", "[chat]") {
    auto args = GENERATE(as<std::vector<std::string>>{}, std::vector<std::string>{"nowhere"},
                         std::vector<std::string>{"127.0.0.1:0", "--threads", "0"},
                         std::vector<std::string>{"127.0.0.1:0", "--bogus"});
    args.insert(args.begin(), netloop::test::sample_path("chat"));
    CAPTURE(args);
    child_process chat(args, {}, "/dev/null");
    CHECK(chat.exited_with(2, 10s));
}
