// SPDX-License-Identifier: MIT
// promtool_check: Prometheus's own linter (`promtool check metrics`, Debian package prometheus)
// run as a process on a metrics text, with bounded waits.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <sys/wait.h>

#include "process.hpp"
#include "temp_file.hpp"

namespace netloop::test {

struct promtool_verdict {
    bool ran = false;    // promtool started and exited within the bound
    int exit_code = -1;  // 0: no problems found
    std::string output;  // what it said (its problems), stdout and stderr together
};

inline promtool_verdict promtool_check(const std::string& metrics_text) {
    temp_file input;
    input.write(metrics_text);
    // 127 from the shell: promtool is not installed (scripts/setup installs it).
    child_process promtool(
        {"/bin/sh", "-c", "exec promtool check metrics < \"$0\" 2>&1", input.path()});
    promtool_verdict v;
    while (auto line = promtool.read_line(std::chrono::seconds(20))) v.output += *line + "\n";
    auto status = promtool.wait(std::chrono::seconds(20));
    if (!status || !WIFEXITED(*status)) return v;
    v.ran = WEXITSTATUS(*status) != 127;
    v.exit_code = WEXITSTATUS(*status);
    if (!v.ran) v.output += "promtool not found: scripts/setup installs it (package prometheus)\n";
    return v;
}

}  // namespace netloop::test
