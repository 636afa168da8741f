// SPDX-License-Identifier: MIT
// Living under systemd without libsystemd: socket activation, readiness, watchdog, and handing
// the listening sockets to a successor for a restart that drops no connection. Linux only: on
// another system `listen_activated()` with LISTEN_FDS set and `start_successor()` throw
// `errc::not_supported`, `notify()` returns false and `watchdog_keepalive()` returns at once.
#pragma once

#include <netloop/detail/config.hpp>

#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

#include <netloop/export.hpp>
#include <netloop/loop.hpp>
#include <netloop/server.hpp>
#include <netloop/task.hpp>

namespace netloop {

/// Adopts the listening sockets passed by systemd (or any LISTEN_FDS launcher): fds 3 to
/// 3 + LISTEN_FDS - 1, in order, as servers that behave exactly like `listen()`'s. Empty when
/// the process was not activated (no LISTEN_FDS). The variables are removed from the
/// environment, so children do not inherit them.
///
/// Throws `error` with `errc::activation_failed`, adopting nothing, when the environment is
/// wrong: LISTEN_PID names another process, LISTEN_FDS is not a count, LISTEN_FDNAMES has
/// another count, or an fd is not a listening stream socket (SO_ACCEPTCONN; IPv4, IPv6 or
/// Unix). An adopted Unix socket's file belongs to whoever made it: `close()` leaves it.
[[nodiscard]] NETLOOP_API std::vector<server> listen_activated(loop& l = loop::current());

/// As above, with the listen options that apply to a socket made elsewhere: `tls` and
/// `handshake_timeout` (the rest was decided by whoever made the socket).
[[nodiscard]] NETLOOP_API std::vector<server> listen_activated(const listen_options& options,
                                                               loop& l = loop::current());

/// Sends `state` (e.g. "READY=1") to the service manager's NOTIFY_SOCKET (a path, or an
/// abstract name starting with '@'). Returns false, doing nothing, when NOTIFY_SOCKET is unset;
/// never blocks. Thread safety: safe from any thread.
NETLOOP_API bool notify(std::string_view state) noexcept;

/// `notify("READY=1")`: the service is up (after `announce()`).
inline bool notify_ready() noexcept { return notify("READY=1"); }

/// `notify("STOPPING=1")`: a drain has begun.
inline bool notify_stopping() noexcept { return notify("STOPPING=1"); }

/// `notify("STATUS=<text>")`: a line for `systemctl status`.
NETLOOP_API bool notify_status(std::string_view text) noexcept;

/// While awaited, sends `WATCHDOG=1` every half of WATCHDOG_USEC, from the loop — so a stuck
/// loop stops the keep-alives and systemd restarts the service. Returns at once when no
/// watchdog is asked of this process (WATCHDOG_USEC unset, or WATCHDOG_PID another process).
/// Ends with `errc::cancelled` when the awaiting task is cancelled: spawn it.
[[nodiscard]] NETLOOP_API task<> watchdog_keepalive();

/// Starts `argv` (argv[0] a path) as a successor that inherits `servers`' listening sockets
/// through the LISTEN_FDS protocol — it adopts them with `listen_activated()` — and waits, up
/// to `ready_timeout`, for it to send READY=1 on a NOTIFY_SOCKET of ours. Only the successor's
/// own process counts (its pid, checked through the kernel's SCM_CREDENTIALS, as systemd's
/// `NotifyAccess=main`): a message from any other process — another local one that found the
/// socket, or a child of the successor — is ignored and logged at warn. A wrapper script must
/// `exec` the program, so that the pid stays the same. Returns its pid; the
/// caller then stops accepting and drains (nginx-style restart: the kernel's accept queue is
/// shared, so no connection is refused or reset in between). A Unix socket file then belongs
/// to the successor: this process's `close()` no longer removes it.
///
/// Throws `error` with `errc::spawn_failed` if it cannot be started, exits, or is not ready
/// in time (it is then killed).
[[nodiscard]] NETLOOP_API task<pid_t> start_successor(std::vector<std::string> argv,
                                                      std::vector<const server*> servers,
                                                      duration ready_timeout);

}  // namespace netloop
