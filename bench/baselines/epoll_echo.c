// SPDX-License-Identifier: MIT
// epoll_echo: a single-threaded, level-triggered raw epoll echo server in C, the lower bound.
//
// Per readiness event: one recv into a shared buffer and one send of what was read. A send
// that does not take everything parks the rest on the connection and stops reading from it
// until it is written (back-pressure), as the framework's read-then-write loop does.
// Usage: epoll_echo [HOST:PORT] [--buffer N] [--nodelay]
//   HOST an IP literal ([v6] in brackets), port 0 ok; --buffer: read size (4096, as samples/echo);
//   --nodelay: TCP_NODELAY on accepted connections (off by default, as in netloop).

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    char* pending;  // bytes read but not yet written, or NULL
    size_t pending_len;
    size_t pending_off;
};

static void fail(const char* what) {
    fprintf(stderr, "epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int parse_address(const char* text, struct sockaddr_storage* addr, socklen_t* len) {
    char host[128];
    const char* port;
    if (text[0] == '[') {
        const char* close = strchr(text, ']');
        if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host) return -1;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port = close + 2;
    } else {
        const char* colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
    }
    char* end;
    long p = strtol(port, &end, 10);
    if (*port == '\0' || *end != '\0' || p < 0 || p > 65535) return -1;
    memset(addr, 0, sizeof *addr);
    struct sockaddr_in* v4 = (struct sockaddr_in*)addr;
    struct sockaddr_in6* v6 = (struct sockaddr_in6*)addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)p);
        *len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)p);
        *len = sizeof *v6;
    } else {
        return -1;
    }
    return 0;
}

static void announce(int fd) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    char host[INET6_ADDRSTRLEN];
    if (getsockname(fd, (struct sockaddr*)&addr, &len) != 0) fail("getsockname");
    if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6* v6 = (struct sockaddr_in6*)&addr;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        printf("listening on [%s]:%u\n", host, ntohs(v6->sin6_port));
    } else {
        struct sockaddr_in* v4 = (struct sockaddr_in*)&addr;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        printf("listening on %s:%u\n", host, ntohs(v4->sin_port));
    }
    fflush(stdout);
}

static void close_conn(struct conn* c) {
    close(c->fd);  // also removes it from the epoll set
    free(c->pending);
    free(c);
}

static void set_events(int ep, struct conn* c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) fail("epoll_ctl");
}

// Sends what is parked; returns -1 if the connection failed, 0 if bytes remain, 1 when done.
static int flush_pending(struct conn* c) {
    while (c->pending_off < c->pending_len) {
        ssize_t w =
            send(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->pending_off += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return -1;
        }
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    return 1;
}

static void on_readable(int ep, struct conn* c, char* buf, size_t buf_size) {
    ssize_t n = recv(c->fd, buf, buf_size, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) {
        close_conn(c);
        return;
    }
    ssize_t w = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (w == n) return;
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        close_conn(c);
        return;
    }
    size_t done = w > 0 ? (size_t)w : 0;
    c->pending_len = (size_t)n - done;
    c->pending_off = 0;
    c->pending = malloc(c->pending_len);
    if (!c->pending) fail("malloc");
    memcpy(c->pending, buf + done, c->pending_len);
    set_events(ep, c, EPOLLOUT);
}

int main(int argc, char** argv) {
    const char* where = "0.0.0.0:8080";
    size_t buf_size = 4096;  // the 4 KiB array of samples/echo
    int nodelay = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--nodelay") == 0) {
            nodelay = 1;
        } else if (strcmp(argv[i], "--buffer") == 0 && i + 1 < argc) {
            buf_size = (size_t)strtoul(argv[++i], NULL, 10);
            if (buf_size == 0) buf_size = 4096;
        } else {
            where = argv[i];
        }
    }
    struct sockaddr_storage addr;
    socklen_t addr_len;
    if (parse_address(where, &addr, &addr_len) != 0) {
        fprintf(stderr, "epoll_echo: bad address %s (want host:port or [v6]:port)\n", where);
        return 2;
    }

    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &signals, NULL) != 0) fail("sigprocmask");
    int sfd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) fail("signalfd");

    int lfd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) fail("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr*)&addr, addr_len) != 0) fail("bind");
    if (listen(lfd, 128) != 0) fail("listen");  // netloop's default backlog

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) fail("epoll_create1");
    // The listener and the signalfd are told apart from connections by these two pointers.
    static char listener_tag, signal_tag;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) fail("epoll_ctl");
    ev.data.ptr = &signal_tag;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) != 0) fail("epoll_ctl");
    announce(lfd);

    char* buf = malloc(buf_size);
    if (!buf) fail("malloc");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; ++i) {
            void* tag = events[i].data.ptr;
            if (tag == &signal_tag) {
                close(lfd);
                free(buf);
                return 0;  // the kernel closes the rest
            }
            if (tag == &listener_tag) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;  // EAGAIN, or EMFILE & co: level-triggered, retried
                    struct conn* c = calloc(1, sizeof *c);
                    if (!c) fail("calloc");
                    c->fd = fd;
                    if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0) fail("epoll_ctl");
                }
                continue;
            }
            struct conn* c = tag;
            if (c->pending) {
                int r = flush_pending(c);
                if (r < 0)
                    close_conn(c);
                else if (r > 0)
                    set_events(ep, c, EPOLLIN);
            } else if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_readable(ep, c, buf, buf_size);
            }
        }
    }
}
