// SPDX-License-Identifier: MIT
// metrics: server_stats in Prometheus's text format, line by line and through promtool's linter.
#include <string>
#include <vector>

#include <netloop/metrics.hpp>
#include <netloop/server.hpp>

#include "support/catch.hpp"
#include "support/promtool.hpp"

using netloop::metrics_options;
using netloop::render_metrics;
using netloop::server_stats;

namespace {

const server_stats sample{.accepted = 12,
                          .rejected = 2,
                          .active = 3,
                          .peak_active = 7,
                          .bytes_read = 123456789012,
                          .bytes_written = 987654321,
                          .accept_errors = 4,
                          .handshake_failures = 5,
                          .proxy_failures = 6};

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at < text.size()) {
        auto nl = text.find('\n', at);
        if (nl == std::string::npos) nl = text.size();
        out.push_back(text.substr(at, nl - at));
        at = nl + 1;
    }
    return out;
}

bool has_line(const std::string& text, const std::string& line) {
    auto all = lines(text);
    return std::find(all.begin(), all.end(), line) != all.end();
}

}  // namespace

TEST_CASE("render_metrics() gives one sample per counter, with HELP and TYPE", "[metrics]") {
    auto text = render_metrics(sample);
    CAPTURE(text);
    CHECK(text.back() == '\n');
    for (const char* line : {
             "# TYPE netloop_connections_accepted_total counter",
             "netloop_connections_accepted_total 12",
             "# TYPE netloop_connections_rejected_total counter",
             "netloop_connections_rejected_total{reason=\"limit\"} 2",
             "# TYPE netloop_connections_active gauge",
             "netloop_connections_active 3",
             "# TYPE netloop_connections_peak_active gauge",
             "netloop_connections_peak_active 7",
             "# TYPE netloop_bytes_read_total counter",
             "netloop_bytes_read_total 123456789012",
             "# TYPE netloop_bytes_written_total counter",
             "netloop_bytes_written_total 987654321",
             "# TYPE netloop_accept_errors_total counter",
             "netloop_accept_errors_total 4",
             "# TYPE netloop_tls_handshake_failures_total counter",
             "netloop_tls_handshake_failures_total 5",
             "# TYPE netloop_proxy_header_failures_total counter",
             "netloop_proxy_header_failures_total 6",
             "# TYPE netloop_draining gauge",
             "netloop_draining 0",
         }) {
        CAPTURE(line);
        CHECK(has_line(text, line));
    }
    std::size_t help = 0;
    std::size_t type = 0;
    std::size_t samples = 0;
    for (const auto& l : lines(text)) {
        if (l.starts_with("# HELP netloop_")) {
            ++help;
        } else if (l.starts_with("# TYPE netloop_")) {
            ++type;
        } else {
            CHECK(l.starts_with("netloop_"));
            ++samples;
        }
    }
    CHECK(help == 10);
    CHECK(type == 10);
    CHECK(samples == 10);
}

TEST_CASE("netloop_draining reads 1 while the server drains", "[metrics]") {
    auto text = render_metrics(sample, metrics_options{.draining = true});
    CHECK(has_line(text, "netloop_draining 1"));
    CHECK_FALSE(has_line(text, "netloop_draining 0"));
}

TEST_CASE("per-loop figures become one sample per loop, labelled loop=\"i\"", "[metrics]") {
    std::vector<server_stats> loops(3);
    loops[0].accepted = 10;
    loops[1].accepted = 11;
    loops[2].accepted = 12;
    loops[2].rejected = 1;
    auto text = render_metrics(loops);
    CAPTURE(text);
    CHECK(has_line(text, "netloop_connections_accepted_total{loop=\"0\"} 10"));
    CHECK(has_line(text, "netloop_connections_accepted_total{loop=\"1\"} 11"));
    CHECK(has_line(text, "netloop_connections_accepted_total{loop=\"2\"} 12"));
    CHECK(has_line(text, "netloop_connections_rejected_total{loop=\"2\",reason=\"limit\"} 1"));
    CHECK(has_line(text, "netloop_connections_active{loop=\"1\"} 0"));
    CHECK(has_line(text, "netloop_draining 0"));
    CHECK(text.find("netloop_connections_accepted_total 1") == std::string::npos);
    // One loop: no label.
    auto one = render_metrics(std::span<const server_stats>(loops).first(1));
    CHECK(has_line(one, "netloop_connections_accepted_total 10"));
}

TEST_CASE("promtool check metrics accepts what render_metrics() renders", "[metrics]") {
    std::vector<server_stats> loops{sample, sample};
    auto text = GENERATE_COPY(render_metrics(server_stats{}), render_metrics(sample),
                              render_metrics(sample, {.draining = true}), render_metrics(loops));
    auto verdict = netloop::test::promtool_check(text);
    CAPTURE(text, verdict.output);
    REQUIRE(verdict.ran);
    CHECK(verdict.exit_code == 0);
    CHECK(verdict.output.empty());
}
