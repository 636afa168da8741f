// SPDX-License-Identifier: MIT
// temp_file: a fresh file in the temporary directory (a child's stderr, say), removed with it.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace netloop::test {

class temp_file {
public:
    temp_file() {
        auto tmpl = (std::filesystem::temp_directory_path() / "netloop-test-XXXXXX").string();
        int fd = ::mkstemp(tmpl.data());
        if (fd >= 0) ::close(fd);
        path_ = tmpl;
    }
    ~temp_file() { ::unlink(path_.c_str()); }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;

    [[nodiscard]] const std::string& path() const noexcept { return path_; }

    // Replaces the contents with `text`.
    void write(const std::string& text) const {
        std::ofstream out(path_, std::ios::trunc);
        out << text;
    }

    [[nodiscard]] std::string contents() const {
        std::ifstream in(path_);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

private:
    std::string path_;
};

}  // namespace netloop::test
