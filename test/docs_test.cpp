// SPDX-License-Identifier: MIT
// The guides' C++ blocks: each one is, byte for byte, the doc/examples file its marker names.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "support/catch.hpp"

namespace fs = std::filesystem;

namespace {

std::string source_dir() {
    const char* dir = std::getenv("NETLOOP_SOURCE_DIR");
    return dir != nullptr ? dir : ".";
}

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// A C++ block of a guide and the example file it claims to be.
struct block {
    std::string where;    // "doc/tutorial.md:42"
    std::string example;  // "doc/examples/tutorial_01_listen.cpp"
    std::string code;     // the lines between the fences, each with its '\n'
};

struct scan {
    std::vector<block> blocks;
    std::vector<std::string> problems;
};

constexpr std::string_view marker_open = "<!-- example: ";
constexpr std::string_view marker_close = " -->";

bool is_cpp_fence(std::string_view info) {
    return info == "cpp" || info == "c++" || info == "C++" || info == "cxx";
}

// Reads a guide: every C++ fenced block must come right after a marker line
// `<!-- example: doc/examples/NAME.cpp -->`, and every marker must be followed by such a block.
scan read_guide(const std::string& name, const std::string& text) {
    scan out;
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);

    for (std::size_t i = 0; i < lines.size(); ++i) {
        std::string_view line = lines[i];
        auto where = name + ":" + std::to_string(i + 1);
        std::string example;
        if (line.starts_with(marker_open) && line.ends_with(marker_close)) {
            example = std::string(line.substr(
                marker_open.size(), line.size() - marker_open.size() - marker_close.size()));
            if (i + 1 >= lines.size() || !lines[i + 1].starts_with("```") ||
                !is_cpp_fence(std::string_view(lines[i + 1]).substr(3))) {
                out.problems.push_back(where + ": marker not followed by a ```cpp block");
                continue;
            }
            line = lines[++i];
            where = name + ":" + std::to_string(i + 1);
        }
        if (!line.starts_with("```")) continue;
        bool cpp = is_cpp_fence(line.substr(3));
        if (cpp && example.empty()) {
            out.problems.push_back(where + ": ```cpp block without an example marker");
        }
        std::string code;
        std::size_t j = i + 1;
        while (j < lines.size() && !lines[j].starts_with("```")) code += lines[j++] + "\n";
        if (j == lines.size()) out.problems.push_back(where + ": fence never closed");
        if (cpp && !example.empty()) out.blocks.push_back(block{where, example, code});
        i = j;
    }
    return out;
}

// Every guide in doc/, read.
scan read_guides() {
    scan all;
    auto doc = fs::path(source_dir()) / "doc";
    for (const auto& entry : fs::directory_iterator(doc)) {
        if (entry.path().extension() != ".md") continue;
        auto one = read_guide("doc/" + entry.path().filename().string(), slurp(entry.path()));
        all.blocks.insert(all.blocks.end(), one.blocks.begin(), one.blocks.end());
        all.problems.insert(all.problems.end(), one.problems.begin(), one.problems.end());
    }
    return all;
}

std::string joined(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
}

}  // namespace

TEST_CASE("the checker finds an unmarked block, a marker without a block, and an open fence",
          "[docs]") {
    auto ok = read_guide("ok.md",
                         "text\n<!-- example: doc/examples/a.cpp -->\n```cpp\nint x;\n```\n"
                         "```sh\nls\n```\n");
    CHECK(ok.problems.empty());
    REQUIRE(ok.blocks.size() == 1);
    CHECK(ok.blocks[0].example == "doc/examples/a.cpp");
    CHECK(ok.blocks[0].code == "int x;\n");

    CHECK(read_guide("bad.md", "```cpp\nint x;\n```\n").problems.size() == 1);
    CHECK(read_guide("bad.md", "```c++\nint x;\n```\n").problems.size() == 1);
    CHECK(read_guide("bad.md", "<!-- example: doc/examples/a.cpp -->\n\n```cpp\n```\n")
              .problems.size() == 2);  // the marker is not right before, the block is unmarked
    CHECK(read_guide("bad.md", "<!-- example: doc/examples/a.cpp -->\n```cpp\nint x;\n")
              .problems.size() == 1);
}

TEST_CASE("every C++ block in doc/*.md has an example marker right before it", "[docs]") {
    auto guides = read_guides();
    INFO(joined(guides.problems));
    CHECK(guides.problems.empty());
    CHECK(guides.blocks.size() >= 10);
}

TEST_CASE("every C++ block in doc/*.md is the example file it names, byte for byte", "[docs]") {
    for (const auto& b : read_guides().blocks) {
        CAPTURE(b.where, b.example);
        auto path = fs::path(source_dir()) / b.example;
        REQUIRE(b.example.starts_with("doc/examples/"));
        REQUIRE(fs::exists(path));
        CHECK(b.code == slurp(path));
    }
}

TEST_CASE("every file in doc/examples is shown once in a guide and built by doc/meson.build",
          "[docs]") {
    std::map<std::string, int> shown;
    for (const auto& b : read_guides().blocks) ++shown[b.example];
    auto build = slurp(fs::path(source_dir()) / "doc" / "meson.build");
    std::size_t files = 0;
    for (const auto& entry : fs::directory_iterator(fs::path(source_dir()) / "doc" / "examples")) {
        auto file = entry.path().filename().string();
        CAPTURE(file);
        REQUIRE(entry.path().extension() == ".cpp");
        CHECK(shown["doc/examples/" + file] == 1);
        CHECK(build.find("'" + entry.path().stem().string() + "'") != std::string::npos);
        ++files;
    }
    CHECK(files == shown.size());
}

TEST_CASE("each tutorial example says the step number of the section that shows it", "[docs]") {
    std::istringstream in(slurp(fs::path(source_dir()) / "doc" / "tutorial.md"));
    int section = 0;
    int checked = 0;
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("## ")) section = std::atoi(line.c_str() + 3);
        constexpr std::string_view step = "// Tutorial step ";
        if (!line.starts_with(step)) continue;
        CAPTURE(line);
        CHECK(std::atoi(line.c_str() + step.size()) == section);
        ++checked;
    }
    CHECK(checked >= 6);
}

TEST_CASE("doc/comparison.md's feature table gives netloop the TLS it has", "[docs]") {
    std::istringstream in(slurp(fs::path(source_dir()) / "doc" / "comparison.md"));
    int rows = 0;
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with("| TLS |")) continue;
        CAPTURE(line);
        // The first cell after the feature is netloop's.
        CHECK(line.substr(7, 5).find("\u2717") == std::string::npos);
        CHECK(line.find("tls_context") != std::string::npos);
        ++rows;
    }
    CHECK(rows == 1);
}
