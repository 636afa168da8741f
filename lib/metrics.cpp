// SPDX-License-Identifier: MIT
// metrics: server_stats rendered in Prometheus's text exposition format 0.0.4.
#include <cstdint>

#include <netloop/metrics.hpp>

namespace netloop {
namespace {

struct metric {
    const char* name;
    const char* type;
    const char* help;
    const char* fixed_labels;  // e.g. reason="limit", or ""
    std::uint64_t server_stats::*field;
};

constexpr metric metrics[] = {
    {"netloop_connections_accepted_total", "counter",
     "Connections accepted, those a limit rejected included.", "", &server_stats::accepted},
    {"netloop_connections_rejected_total", "counter",
     "Connections accepted and closed at once, by the reason that closed them.", "reason=\"limit\"",
     &server_stats::rejected},
    {"netloop_connections_active", "gauge", "Connections open now.", "", &server_stats::active},
    {"netloop_connections_peak_active", "gauge", "The most connections that were open at once.", "",
     &server_stats::peak_active},
    {"netloop_bytes_read_total", "counter", "Bytes read from all connections.", "",
     &server_stats::bytes_read},
    {"netloop_bytes_written_total", "counter", "Bytes written to all connections.", "",
     &server_stats::bytes_written},
    {"netloop_accept_errors_total", "counter",
     "Failed accept attempts (EMFILE, ECONNABORTED, ...), each retried.", "",
     &server_stats::accept_errors},
    {"netloop_tls_handshake_failures_total", "counter", "TLS handshakes that failed or timed out.",
     "", &server_stats::handshake_failures},
    {"netloop_proxy_header_failures_total", "counter",
     "Connections refused for their PROXY protocol header (missing, invalid, slow, untrusted).", "",
     &server_stats::proxy_failures},
};

void sample(std::string& out, const char* name, const std::string& loop_label,
            const char* fixed_labels, std::uint64_t value) {
    out += name;
    bool fixed = *fixed_labels != '\0';
    if (!loop_label.empty() || fixed) {
        out += '{';
        out += loop_label;
        if (!loop_label.empty() && fixed) out += ',';
        out += fixed_labels;
        out += '}';
    }
    out += ' ';
    out += std::to_string(value);
    out += '\n';
}

}  // namespace

std::string render_metrics(const server_stats& stats, const metrics_options& options) {
    return render_metrics(std::span<const server_stats>(&stats, 1), options);
}

std::string render_metrics(std::span<const server_stats> per_loop, const metrics_options& options) {
    std::string out;
    out.reserve(2048 + per_loop.size() * 512);
    for (const auto& m : metrics) {
        out += "# HELP ";
        out += m.name;
        out += ' ';
        out += m.help;
        out += "\n# TYPE ";
        out += m.name;
        out += ' ';
        out += m.type;
        out += '\n';
        for (std::size_t i = 0; i < per_loop.size(); ++i) {
            std::string loop_label;
            if (per_loop.size() > 1) loop_label = "loop=\"" + std::to_string(i) + "\"";
            sample(out, m.name, loop_label, m.fixed_labels, per_loop[i].*m.field);
        }
    }
    out +=
        "# HELP netloop_draining 1 while the server drains (shuts down gracefully), else 0.\n"
        "# TYPE netloop_draining gauge\n";
    out += options.draining ? "netloop_draining 1\n" : "netloop_draining 0\n";
    return out;
}

}  // namespace netloop
