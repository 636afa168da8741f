// SPDX-License-Identifier: MIT
// Unix domain sockets: peer credentials, the socket file's life (stale, live, not a socket, mode,
// removal), abstract names, addresses, the lingering close and the per-address limit.
#include <array>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/serve_helpers.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::task;
using netloop::test::echo_once;
using netloop::test::eventually;
using netloop::test::kind_of;
using netloop::test::read_n;
using netloop::test::run_bounded;
using netloop::test::serve_into;
using netloop::test::serve_outcome;

namespace {

namespace fs = std::filesystem;

// A name of the form netloop-unix-<pid>-<n> that no other test (or test run) uses.
std::string unique_name() {
    static int counter = 0;
    return "netloop-unix-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// A socket path in the temporary directory; whatever is left at it is removed with this object.
class socket_path {
public:
    socket_path() : path_((fs::temp_directory_path() / (unique_name() + ".sock")).string()) {}
    ~socket_path() {
        std::error_code ignored;
        fs::remove(path_, ignored);
    }
    socket_path(const socket_path&) = delete;
    socket_path& operator=(const socket_path&) = delete;

    [[nodiscard]] const std::string& str() const noexcept { return path_; }
    [[nodiscard]] address at() const { return address::unix_socket(path_); }

private:
    std::string path_;
};

// The inode at `path` (0 if there is none): tells a socket file from its replacement.
ino_t inode_of(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Leaves a socket file at `path` that nothing listens on, as a crashed server does: binds a
// socket there and closes it without unlinking. False if that failed.
bool make_stale_socket_file(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    path.copy(sun.sun_path, sizeof sun.sun_path - 1);
    bool bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0;
    ::close(fd);
    return bound;
}

// How `server::listen(at, options)` failed, as {kind, errno}; {errc{}, 0} if it did not.
std::pair<errc, int> listen_failure(const address& at, netloop::listen_options options = {}) {
    try {
        auto s = netloop::server::listen(at, options);
    } catch (const netloop::error& e) {
        return {e.kind(), e.sys_errno()};
    }
    return {errc{}, 0};
}

// The kind of the error `address::unix_socket(path)` throws (errc{} if none).
errc unix_socket_error(std::string_view path) {
    try {
        (void)address::unix_socket(path);
    } catch (const netloop::error& e) {
        return e.kind();
    }
    return errc{};
}

errc parse_error(std::string_view text) {
    try {
        (void)address::parse(text);
    } catch (const netloop::error& e) {
        return e.kind();
    }
    return errc{};
}

std::string contents_of(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// True if the kernel lists `name` (an abstract name, '@' first) among its Unix sockets.
bool kernel_lists(const std::string& name) {
    std::ifstream in("/proc/net/unix");
    std::string line;
    while (std::getline(in, line)) {
        if (line.size() >= name.size() &&
            line.compare(line.size() - name.size(), name.size(), name) == 0) {
            return true;
        }
    }
    return false;
}

// Serves an echo on `s` while one client sends `msg`, then closes `s`; what came back (or
// "failed: " and the exception's message).
task<std::string> echo_through(netloop::server& s, std::string msg) {
    serve_outcome out;
    netloop::spawn(serve_into(s, netloop::test::echo_until_closed, {}, out));
    std::string back;
    try {
        auto c = co_await netloop::connect(s.local_address(), 5s);
        back = co_await echo_once(c, msg);
    } catch (const std::exception& e) {
        back = std::string("failed: ") + e.what();
    }
    s.close();
    auto done = [&] { return out.done; };
    (void)co_await eventually(done);
    co_return back;
}

}  // namespace

TEST_CASE(
    "credentials() gives the peer process's pid, uid and gid on both ends of a Unix socket, "
    "and nullopt over TCP",
    "[unix]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    using creds = std::optional<netloop::peer_credentials>;
    auto [of_client, of_server] = run_bounded([&]() -> task<std::pair<creds, creds>> {
        auto pair = co_await netloop::test::make_pair_over(transport);
        co_return std::pair<creds, creds>{pair.server_side.credentials(),
                                          pair.client_side.credentials()};
    });
    if (!transport.starts_with("unix")) {
        CHECK_FALSE(of_client.has_value());
        CHECK_FALSE(of_server.has_value());
        return;
    }
    // Both ends are this process.
    REQUIRE(of_client.has_value());
    REQUIRE(of_server.has_value());
    for (const auto& c : {*of_client, *of_server}) {
        CHECK(c.pid == ::getpid());
        CHECK(c.uid == ::getuid());
        CHECK(c.gid == ::getgid());
    }
}

TEST_CASE("listen() removes a stale socket file that nothing listens on, and serves there",
          "[unix][file]") {
    socket_path path;
    REQUIRE(make_stale_socket_file(path.str()));
    REQUIRE(fs::is_socket(path.str()));
    auto echoed = run_bounded([&]() -> task<std::string> {
        auto s = netloop::server::listen(path.at());
        co_return co_await echo_through(s, "over a recovered path");
    });
    CHECK(echoed == "over a recovered path");
    CHECK_FALSE(fs::exists(path.str()));
}

TEST_CASE(
    "listen() on a path where a server listens fails with bind_failed and EADDRINUSE, and "
    "that server keeps its file and goes on serving",
    "[unix][file]") {
    socket_path path;
    struct result {
        std::pair<errc, int> second{};
        bool same_file = false;
        std::string echoed;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto live = netloop::server::listen(path.at());
        auto inode = inode_of(path.str());
        r.second = listen_failure(path.at());
        r.same_file = inode != 0 && inode_of(path.str()) == inode;
        r.echoed = co_await echo_through(live, "still mine");
        co_return r;
    });
    CHECK(r.second.first == errc::bind_failed);
    CHECK(r.second.second == EADDRINUSE);
    CHECK(r.same_file);
    CHECK(r.echoed == "still mine");
}

TEST_CASE(
    "listen() on a path that holds a regular file fails with bind_failed and EADDRINUSE, and "
    "leaves the file as it was",
    "[unix][file]") {
    socket_path path;
    const std::string precious = "not a socket\nkeep me\n";
    {
        std::ofstream out(path.str());
        out << precious;
    }
    auto [kind, sys] = listen_failure(path.at());
    CHECK(kind == errc::bind_failed);
    CHECK(sys == EADDRINUSE);
    CHECK(fs::is_regular_file(path.str()));
    CHECK(contents_of(path.str()) == precious);
}

TEST_CASE("listen_options.file_mode sets the socket file's permission bits", "[unix][file]") {
    auto mode = GENERATE(0600, 0666);
    CAPTURE(mode);
    socket_path path;
    auto s = netloop::server::listen(path.at(), {.file_mode = mode});
    struct stat st {};
    REQUIRE(::stat(path.str().c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK(static_cast<int>(st.st_mode & 07777) == mode);
}

TEST_CASE("close() and the destructor remove the socket file the server made", "[unix][file]") {
    socket_path path;
    {
        auto s = netloop::server::listen(path.at());
        REQUIRE(fs::is_socket(path.str()));
        s.close();
        CHECK_FALSE(fs::exists(path.str()));
        s.close();  // idempotent
    }
    {
        auto s = netloop::server::listen(path.at());
        REQUIRE(fs::is_socket(path.str()));
    }
    CHECK_FALSE(fs::exists(path.str()));
}

TEST_CASE(
    "close() of a server whose file was replaced leaves the new server's file, and the new "
    "server goes on serving",
    "[unix][file]") {
    socket_path path;
    struct result {
        bool replaced = false;
        bool kept = false;
        std::string echoed;
        bool removed_at_last = false;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto first = netloop::server::listen(path.at());
        auto first_inode = inode_of(path.str());
        // Someone removes the first server's file, and a second server binds the path anew.
        ::unlink(path.str().c_str());
        auto second = netloop::server::listen(path.at());
        auto second_inode = inode_of(path.str());
        r.replaced = second_inode != 0 && second_inode != first_inode;
        first.close();
        r.kept = inode_of(path.str()) == second_inode;
        r.echoed = co_await echo_through(second, "second server");
        r.removed_at_last = !fs::exists(path.str());
        co_return r;
    });
    CHECK(r.replaced);
    CHECK(r.kept);
    CHECK(r.echoed == "second server");
    CHECK(r.removed_at_last);
}

TEST_CASE("an abstract name leaves no file, and is free again once its server has closed",
          "[unix][abstract]") {
    auto name = unique_name();
    auto at = address::unix_socket("@" + name);
    std::vector<fs::path> candidates{fs::current_path() / ("@" + name), fs::current_path() / name,
                                     fs::temp_directory_path() / name};
    struct result {
        bool listed = false;
        std::string echoed;
        std::string again;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        {
            auto s = netloop::server::listen(at);
            r.listed = kernel_lists("@" + name);
            r.echoed = co_await echo_through(s, "abstract");
        }
        auto again = netloop::server::listen(at);
        r.again = co_await echo_through(again, "abstract again");
        co_return r;
    });
    CHECK(r.listed);
    CHECK(r.echoed == "abstract");
    CHECK(r.again == "abstract again");
    for (const auto& p : candidates) {
        CAPTURE(p.string());
        CHECK_FALSE(fs::exists(fs::symlink_status(p)));
    }
}

TEST_CASE("reuse_port on a Unix socket is invalid_argument, and makes no file", "[unix]") {
    socket_path path;
    auto at = GENERATE(as<std::string>{}, "file", "abstract");
    CAPTURE(at);
    auto where = at == "file" ? path.at() : address::unix_socket("@" + unique_name());
    auto [kind, sys] = listen_failure(where, {.reuse_port = true});
    CHECK(kind == errc::invalid_argument);
    CHECK_FALSE(fs::exists(path.str()));
}

TEST_CASE("Unix addresses: parse() and to_string() round-trip, and bad names are invalid_address",
          "[unix][address]") {
    auto file = address::parse("unix:/p");
    CHECK(file.is_unix());
    CHECK_FALSE(file.is_v6());
    CHECK(file.path() == "/p");
    CHECK(file.host() == "/p");
    CHECK(file.port() == 0);
    CHECK(file.to_string() == "unix:/p");
    CHECK(file == address::unix_socket("/p"));
    CHECK_FALSE(file == address::unix_socket("/q"));
    CHECK_FALSE(file == address::parse("0.0.0.0:0"));  // the endpoint a Unix address carries

    auto abstract = address::parse("unix:@n");
    CHECK(abstract.is_unix());
    CHECK(abstract.path() == "@n");
    CHECK(abstract.to_string() == "unix:@n");
    CHECK(abstract == address::unix_socket("@n"));
    CHECK_FALSE(abstract == address::unix_socket("/n"));

    CHECK_FALSE(address::parse("127.0.0.1:80").is_unix());
    CHECK(address::parse("127.0.0.1:80").path().empty());

    for (std::string text : {"unix:/run/app.sock", "unix:@app", "unix:relative/app.sock"}) {
        CAPTURE(text);
        CHECK(address::parse(text).to_string() == text);
    }

    // sun_path holds 108 bytes: 107 and a NUL.
    std::string longest = "/" + std::string(106, 'x');
    CHECK(address::unix_socket(longest).path() == longest);
    CHECK(address::parse("unix:" + longest).to_string() == "unix:" + longest);
    CHECK(unix_socket_error(longest + "x") == errc::invalid_address);
    CHECK(parse_error("unix:" + longest + "x") == errc::invalid_address);

    using namespace std::string_view_literals;
    CHECK(unix_socket_error("/tmp/a\0b"sv) == errc::invalid_address);
    CHECK(parse_error("unix:/tmp/a\0b"sv) == errc::invalid_address);
    CHECK(unix_socket_error("@a\0b"sv) == errc::invalid_address);
    CHECK(unix_socket_error("") == errc::invalid_address);
    CHECK(parse_error("unix:") == errc::invalid_address);
    CHECK(parse_error("unix:@") == errc::invalid_address);
}

TEST_CASE(
    "an accepted Unix client's remote_address() prints as unix:, and the client's "
    "remote_address() is the server's address",
    "[unix][address]") {
    auto transport = GENERATE(as<std::string>{}, "unix", "unix-abstract");
    CAPTURE(transport);
    struct result {
        address server_address;
        address accepted_remote;
        address accepted_local;
        address client_remote;
        address client_local;
    };
    auto r = run_bounded([&]() -> task<result> {
        auto s = netloop::test::listen_on(transport);
        auto client = co_await netloop::test::connect_to(transport, s);
        auto conns = s.connections();
        auto accepted = co_await conns.next();
        REQUIRE(accepted);
        co_return result{s.local_address(), accepted->remote_address(), accepted->local_address(),
                         client.remote_address(), client.local_address()};
    });
    CAPTURE(r.server_address.to_string(), r.accepted_remote.to_string(),
            r.client_remote.to_string());
    CHECK(r.server_address.is_unix());
    CHECK(r.server_address.path().starts_with(transport == "unix" ? "/" : "@"));
    CHECK(r.accepted_remote.is_unix());
    CHECK(r.accepted_remote.path().empty());
    CHECK(r.accepted_remote.to_string() == "unix:");
    CHECK(r.accepted_local == r.server_address);
    CHECK(r.client_remote == r.server_address);
    CHECK(r.client_local.to_string() == "unix:");
}

TEST_CASE(
    "a handler that writes 4 MiB and returns with unread input: the Unix peer reads all 4 MiB, "
    "then EOF, not a reset",
    "[unix][linger]") {
    // The Unix side of serve_test's lingering-close tests: closing a Unix socket with unread
    // input makes the kernel report ECONNRESET to the peer once it has read what was queued; the
    // lingering close drains that input first, so the peer reads an orderly EOF.
    auto transport = GENERATE(as<std::string>{}, "unix", "unix-abstract");
    CAPTURE(transport);
    constexpr std::size_t total = std::size_t{4} << 20;
    auto sent = netloop::test::pattern(total, 9);
    auto unread = netloop::test::pattern(std::size_t{64} << 10, 1);
    struct result {
        bool received_all = false;
        errc end{};
        bool handler_returned = false;
        bool serve_ended = false;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto s = netloop::test::listen_on(transport);
        serve_outcome out;
        netloop::connection_handler writer = [&](netloop::connection c) -> task<> {
            co_await c.write(sent, 20s);
            r.handler_returned = true;  // and returns, leaving the client's input unread
        };
        netloop::spawn(serve_into(s, writer, {}, out));
        auto client = co_await netloop::test::connect_to(transport, s);
        co_await client.write(unread, 5s);
        auto got = co_await read_n(client, total, 20s);
        r.received_all = got == sent;
        std::array<std::byte, 16> buf;
        r.end = co_await kind_of(client.read(buf, 10s));
        client.close();
        s.close();
        auto done = [&] { return out.done; };
        r.serve_ended = co_await eventually(done);
        co_return r;
    });
    CHECK(r.handler_returned);
    CHECK(r.received_all);
    CHECK(r.end == errc::connection_closed);
    CHECK(r.serve_ended);
}

TEST_CASE(
    "max_connections_per_ip counts every Unix peer as one address: the third of two allowed is "
    "closed at once and counted as rejected",
    "[unix][serve]") {
    auto transport = GENERATE(as<std::string>{}, "unix", "unix-abstract");
    CAPTURE(transport);
    struct result {
        std::vector<std::string> echoes;
        errc third{};
        netloop::server_stats stats;
        bool serve_ended = false;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto s = netloop::test::listen_on(transport);
        serve_outcome out;
        netloop::spawn(
            serve_into(s, netloop::test::echo_until_closed, {.max_connections_per_ip = 2}, out));
        std::vector<netloop::connection> clients;
        for (int i = 0; i < 2; ++i) {
            auto c = co_await netloop::test::connect_to(transport, s);
            r.echoes.push_back(co_await echo_once(c, "in"));
            clients.push_back(std::move(c));
        }
        auto third = co_await netloop::test::connect_to(transport, s);
        std::array<std::byte, 1> buf;
        r.third = co_await kind_of(third.read(buf, 5s));
        r.stats = s.stats();
        clients.clear();
        s.close();
        auto done = [&] { return out.done; };
        r.serve_ended = co_await eventually(done);
        co_return r;
    });
    CHECK(r.echoes == std::vector<std::string>{"in", "in"});
    CHECK(r.third == errc::connection_closed);
    CHECK(r.stats.accepted == 3);
    CHECK(r.stats.rejected == 1);
    CHECK(r.serve_ended);
}

TEST_CASE("a Unix connect() to a full backlog waits for room within its timeout, as TCP does",
          "[unix][connect]") {
    struct result {
        int connected = 0;
        std::vector<std::string> failures;
        errc over_full{};
        int queued_before_full = 0;
    };
    auto r = run_bounded([]() -> task<result> {
        result out;
        socket_path path;
        auto s = netloop::server::listen(address::unix_socket(path.str()), {.backlog = 1});
        // Five clients against a backlog of 1 that nobody accepts from yet: the kernel answers
        // EAGAIN to the ones that do not fit, and connect() keeps trying.
        int finished = 0;
        std::vector<netloop::connection> clients;
        for (int i = 0; i < 5; ++i) {
            netloop::spawn([](address to, result& out, int& finished,
                              std::vector<netloop::connection>& keep) -> task<> {
                try {
                    keep.push_back(co_await netloop::connect(to, 10s));
                    ++out.connected;
                } catch (const netloop::error& e) {
                    out.failures.push_back(e.what());
                }
                ++finished;
            }(s.local_address(), out, finished, clients));
        }
        co_await netloop::test::sleep_for(100ms);  // let them pile up against the backlog
        auto conns = s.connections();
        std::vector<netloop::connection> accepted;
        for (int i = 0; i < 5; ++i) {
            auto c = co_await conns.next();
            if (c) accepted.push_back(std::move(*c));
        }
        (void)co_await eventually([&] { return finished == 5; });
        // Nobody accepts any more: once the backlog is full, a connect times out (its own
        // bound), not "No buffer space".
        std::vector<netloop::connection> queued;
        for (int i = 0; i < 10; ++i) {
            try {
                queued.push_back(co_await netloop::connect(s.local_address(), 200ms));
            } catch (const netloop::error& e) {
                out.over_full = e.kind();
                break;
            }
        }
        out.queued_before_full = static_cast<int>(queued.size());
        co_return out;
    });
    CHECK(r.connected == 5);
    CHECK(r.failures.empty());
    CHECK(r.over_full == errc::timeout);
    CHECK(r.queued_before_full >= 1);
}
