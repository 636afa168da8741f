// SPDX-License-Identifier: MIT
// Logging inside lib/: one call that costs an atomic load when logging is off.
#pragma once

#include <exception>
#include <utility>

#include <spdlog/spdlog.h>

#include <netloop/log.hpp>

namespace netloop::detail {

template <typename... Args>
void log(spdlog::level::level_enum level, spdlog::format_string_t<Args...> fmt, Args&&... args) {
    if (auto l = netloop::logger(); l && l->should_log(level)) {
        l->log(level, fmt, std::forward<Args>(args)...);
    }
}

// True if a message at `level` would be logged: for arguments that cost something to make.
inline bool log_enabled(spdlog::level::level_enum level) noexcept {
    auto l = netloop::logger();
    return l && l->should_log(level);
}

// Logs an exception that escaped a task: expected endings (EOF, cancellation) at debug, the rest
// at error. `where` names the task, e.g. "connection 127.0.0.1:5000". With error level off it
// does not look at `e` (most tasks end this way, by EOF); with libstdc++ it never rethrows it.
void log_escaped(std::exception_ptr e, const char* what, const std::string& where) noexcept;

}  // namespace netloop::detail
