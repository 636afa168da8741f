// SPDX-License-Identifier: MIT
// child_process: a sample started as a real process, its stdout read line by line, stopped by
// PID with bounded waits.
#pragma once

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace netloop::test {

class child_process {
public:
    // Starts `argv[0]` with the given arguments; stdout is a pipe read by read_line(), stderr
    // goes to `stderr_path` if given (else inherited). Extra environment as "NAME=value".
    // `in_child` runs in the child just before exec (async-signal-safe calls only).
    explicit child_process(const std::vector<std::string>& argv,
                           const std::vector<std::string>& env = {},
                           const std::string& stderr_path = {}, void (*in_child)() = nullptr) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            ::dup2(fds[1], STDOUT_FILENO);
            if (!stderr_path.empty()) {
                int err = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (err >= 0) ::dup2(err, STDERR_FILENO);
            }
            for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
            if (in_child != nullptr) in_child();
            std::vector<char*> args;
            for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
        ::close(fds[1]);
        out_ = fds[0];
    }

    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    ~child_process() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        if (out_ >= 0) ::close(out_);
    }

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    // The next line of stdout without its newline, or nullopt on EOF or after `limit`.
    std::optional<std::string> read_line(
        std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        auto until = std::chrono::steady_clock::now() + limit;
        for (;;) {
            auto nl = buffer_.find('\n');
            if (nl != std::string::npos) {
                std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                return line;
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return std::nullopt;
            pollfd p{out_, POLLIN, 0};
            int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return std::nullopt;
            char chunk[4096];
            ssize_t n = ::read(out_, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return std::nullopt;
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }

    // Reads the `listening on <address>` line and returns the port, or 0 if none came.
    std::uint16_t announced_port(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        auto line = read_line(limit);
        const std::string prefix = "listening on ";
        if (!line || line->rfind(prefix, 0) != 0) return 0;
        announced_ = line->substr(prefix.size());
        auto colon = announced_.rfind(':');
        return static_cast<std::uint16_t>(std::stoul(announced_.substr(colon + 1)));
    }

    [[nodiscard]] const std::string& announced() const noexcept { return announced_; }

    void signal(int signo) const { ::kill(pid_, signo); }

    // Waits for the exit; the raw wait status, or nullopt if it did not exit within `limit`.
    std::optional<int> wait(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        if (status_) return status_;
        auto until = std::chrono::steady_clock::now() + limit;
        for (;;) {
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                status_ = st;
                return status_;
            }
            if (std::chrono::steady_clock::now() >= until) return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

    // True if the process exited normally with `code` within `limit`.
    bool exited_with(int code, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        auto st = wait(limit);
        return st && WIFEXITED(*st) && WEXITSTATUS(*st) == code;
    }

    // Reads the process's VmRSS in KiB from /proc (0 if gone).
    [[nodiscard]] long rss_kib() const;

private:
    pid_t pid_ = -1;
    int out_ = -1;
    std::string buffer_;
    std::string announced_;
    std::optional<int> status_;
};

inline long child_process::rss_kib() const {
    std::string path = "/proc/" + std::to_string(pid_) + "/status";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) return 0;
    char line[256];
    long kib = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    }
    std::fclose(f);
    return kib;
}

// The path of a sample binary built by Meson (NETLOOP_SAMPLES_DIR is set by test/meson.build).
inline std::string sample_path(const std::string& name) {
    const char* dir = std::getenv("NETLOOP_SAMPLES_DIR");
    return std::string(dir != nullptr ? dir : "samples") + "/" + name;
}

}  // namespace netloop::test
