// SPDX-License-Identifier: MIT
// resp_fuzz: libFuzzer target for the kv sample's RESP parser, fed whole and in random splits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "resp.hpp"

namespace {

// A broken promise of resp::parse: crash, so libFuzzer keeps the input.
void expect(bool promise) {
    if (!promise) std::abort();
}

// What a stream of bytes parses into.
struct outcome {
    std::vector<std::vector<std::string>> commands;
    std::string error;           // empty unless the stream ends in a protocol error
    std::size_t unfinished = 0;  // bytes of an incomplete request at the end

    bool operator==(const outcome&) const = default;
};

// Checks what every result promises about `in`, and keeps a complete command's arguments.
void check(std::string_view in, const resp::request& r, outcome& out) {
    switch (r.state) {
        case resp::status::complete:
            expect(r.consumed > 0 && r.consumed <= in.size());
            expect(r.args.size() <= resp::max_arguments);
            for (auto arg : r.args) {
                // A view into the request's bytes, or into its own unquoted copy of them.
                bool in_input =
                    arg.data() >= in.data() && arg.data() + arg.size() <= in.data() + r.consumed;
                bool in_unquoted = !r.unquoted.empty() && arg.data() >= r.unquoted.data() &&
                                   arg.data() + arg.size() <= r.unquoted.data() + r.unquoted.size();
                expect(in_input || in_unquoted || arg.empty());
            }
            if (!r.args.empty()) out.commands.emplace_back(r.args.begin(), r.args.end());
            break;
        case resp::status::incomplete:
            expect(r.wanted > in.size());
            expect(r.resume.offset <= in.size());
            break;
        case resp::status::error:
            expect(!r.error.empty());
            break;
    }
}

// All of `in` at once, without resuming.
outcome parse_whole(std::string_view in) {
    outcome out;
    std::size_t done = 0;
    for (;;) {
        auto rest = in.substr(done);
        auto r = resp::parse(rest);
        check(rest, r, out);
        if (r.state == resp::status::error) {
            out.error = r.error;
            return out;
        }
        if (r.state == resp::status::incomplete) break;
        done += r.consumed;
    }
    out.unfinished = in.size() - done;
    return out;
}

// splitmix64: chunk sizes that follow from the input, so a crash reproduces.
struct random_sizes {
    std::uint64_t state;
    std::size_t next(std::size_t most) {
        std::uint64_t z = (state += 0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
        z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
        return 1 + static_cast<std::size_t>((z ^ (z >> 31)) % most);
    }
};

// `in` as kv reads it: in chunks, parsing only once `wanted` bytes are there, resuming where the
// last parse stopped, dropping what was consumed.
outcome parse_split(std::string_view in, random_sizes sizes, std::size_t largest_chunk) {
    outcome out;
    std::string buffer;
    std::size_t wanted = 1;
    resp::progress resume;
    for (std::size_t at = 0; at < in.size();) {
        auto chunk = sizes.next(largest_chunk);
        buffer += in.substr(at, chunk);
        at += chunk;
        if (buffer.size() < wanted) continue;
        std::size_t done = 0;
        for (;;) {
            auto rest = std::string_view(buffer).substr(done);
            auto r = resp::parse(rest, resume);
            check(rest, r, out);
            resume = r.resume;
            if (r.state == resp::status::error) {
                out.error = r.error;
                return out;
            }
            if (r.state == resp::status::incomplete) {
                wanted = r.wanted;
                break;
            }
            done += r.consumed;
        }
        buffer.erase(0, done);
    }
    out.unfinished = buffer.size();
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    auto whole = parse_whole(in);

    // However the bytes are split, the same commands and the same verdict.
    std::uint64_t seed = 1469598103934665603u;  // FNV-1a of the input
    for (auto byte : in) seed = (seed ^ static_cast<unsigned char>(byte)) * 1099511628211u;
    expect(parse_split(in, {seed}, 1) == whole);
    expect(parse_split(in, {seed}, 8) == whole);
    expect(parse_split(in, {seed + 1}, 512) == whole);

    // Every command, encoded as redis-cli would send it, parses back to itself.
    for (const auto& command : whole.commands) {
        std::vector<std::string_view> args(command.begin(), command.end());
        std::string encoded;
        resp::append_command(encoded, args);
        auto r = resp::parse(encoded);
        expect(r.state == resp::status::complete && r.consumed == encoded.size());
        expect(r.args == args);
    }
    return 0;
}
