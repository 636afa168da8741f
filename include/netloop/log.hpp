// SPDX-License-Identifier: MIT
// set_logger: where netloop's log lines go (nowhere unless the user says so).
#pragma once

#include <netloop/detail/config.hpp>

#include <memory>

#include <netloop/export.hpp>

namespace spdlog {
class logger;
}

namespace netloop {

/// Sends netloop's log lines to `logger`; `nullptr` turns logging off again (the default).
///
/// With a logger: connections accepted, rejected and ended at debug or info, accept back-off
/// and drain timeouts at warn, exceptions that escape a spawned task or a handler at error
/// (an orderly end — EOF, cancellation — at debug). Without one, the library prints nothing.
/// Thread safety: safe from any thread.
NETLOOP_API void set_logger(std::shared_ptr<spdlog::logger> logger);

/// The logger set by `set_logger`, or `nullptr`.
[[nodiscard]] NETLOOP_API std::shared_ptr<spdlog::logger> logger() noexcept;

}  // namespace netloop
