// SPDX-License-Identifier: MIT
// metrics: a server's counters in Prometheus's text exposition format, for a /metrics endpoint.
#pragma once

#include <netloop/detail/config.hpp>

#include <span>
#include <string>
#include <string_view>

#include <netloop/export.hpp>
#include <netloop/server.hpp>

namespace netloop {

/// The HTTP `Content-Type` of what `render_metrics()` returns (text format 0.0.4).
inline constexpr std::string_view metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

/// What `render_metrics()` adds to the counters.
struct metrics_options {
    /// The server is draining (shutting down gracefully): `netloop_draining` reads 1.
    bool draining = false;
};

/// Renders `stats` in Prometheus's text exposition format: one `# HELP` and `# TYPE` line and
/// one sample per metric, counters named `..._total`:
///
/// | metric | type | from |
/// | --- | --- | --- |
/// | `netloop_connections_accepted_total` | counter | `accepted` |
/// | `netloop_connections_rejected_total{reason="limit"}` | counter | `rejected` |
/// | `netloop_connections_active` | gauge | `active` |
/// | `netloop_connections_peak_active` | gauge | `peak_active` |
/// | `netloop_bytes_read_total` | counter | `bytes_read` |
/// | `netloop_bytes_written_total` | counter | `bytes_written` |
/// | `netloop_accept_errors_total` | counter | `accept_errors` |
/// | `netloop_tls_handshake_failures_total` | counter | `handshake_failures` |
/// | `netloop_proxy_header_failures_total` | counter | `proxy_failures` |
/// | `netloop_draining` | gauge | `options.draining` (0 or 1) |
///
/// Safe from any thread (it only reads `stats`).
[[nodiscard]] NETLOOP_API std::string render_metrics(const server_stats& stats,
                                                     const metrics_options& options = {});

/// As above, for figures kept per loop (`serve_options::threads`): with more than one element,
/// each metric has one sample per loop, labelled `loop="0"`, `loop="1"`, ... (a scraper sums
/// them); with one, the samples carry no `loop` label. `netloop_draining` is the server's, once.
[[nodiscard]] NETLOOP_API std::string render_metrics(std::span<const server_stats> per_loop,
                                                     const metrics_options& options = {});

}  // namespace netloop
