// SPDX-License-Identifier: MIT
// cache_hog: streams through a 64 MiB buffer forever (a read and a write per cache line), so a
// process sharing its CPU finds its caches cold; bench/run's "shared core" configurations pin it
// to the server's CPU at the server's priority. Usage: cache_hog [MiB]   Exits 0 on SIGTERM/SIGINT.

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char** argv) {
    size_t mib = 64;
    if (argc > 1) {
        char* end = NULL;
        unsigned long v = strtoul(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || v < 1 || v > 4096) {
            fprintf(stderr, "usage: cache_hog [MiB 1..4096]\n");
            return 2;
        }
        mib = v;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    size_t bytes = mib << 20;
    volatile unsigned char* buffer = malloc(bytes);
    if (buffer == NULL) {
        perror("cache_hog: malloc");
        return 1;
    }
    for (size_t i = 0; i < bytes; ++i) buffer[i] = (unsigned char)i;  // touch every page
    unsigned long passes = 0;
    while (!stop_requested) {
        for (size_t i = 0; i < bytes && !stop_requested; i += 64) buffer[i] += 1;  // one line each
        ++passes;
    }
    free((void*)buffer);
    fprintf(stderr, "cache_hog: %lu passes over %zu MiB\n", passes, mib);
    return 0;
}
