// SPDX-License-Identifier: MIT
// tls_return_epoll: bench/tls_return's exchange (accept, TLS handshake, write one byte,
// close_notify, wait for the client's close) as a hand-written epoll loop on OpenSSL, the way
// nginx runs it: the floor for a TLS handshake on this machine without any layer, set up like
// netloop's server context (TLS 1.2 minimum, the same TLS 1.2 suites by server preference,
// tickets, released buffers, read-ahead). One thread, edge-triggered, one connection state each.
//
// Usage: tls_return_epoll HOST:PORT --tls-cert FILE --tls-key FILE (prints "listening on
// HOST:PORT" once it listens).
#define _GNU_SOURCE  // accept4
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum phase { handshaking, closing };

struct conn {
    int fd;
    SSL* ssl;
    enum phase phase;
};

static void finish(int epoll_fd, struct conn* c) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    SSL_free(c->ssl);
    free(c);
}

// Runs `c` as far as it goes without waiting; 1 if it ended (and was freed).
static int step(int epoll_fd, struct conn* c) {
    for (;;) {
        ERR_clear_error();
        if (c->phase == handshaking) {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                size_t written = 0;
                if (SSL_write_ex(c->ssl, "x", 1, &written) != 1) break;
                SSL_shutdown(c->ssl);  // close_notify; the client's close ends it
                c->phase = closing;
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
            break;
        }
        char buf[512];
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        break;  // EOF or reset: the client closed
    }
    finish(epoll_fd, c);
    return 1;
}

int main(int argc, char** argv) {
    const char* where = argc > 1 ? argv[1] : "127.0.0.1:0";
    const char* cert = NULL;
    const char* key = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--tls-cert") == 0) cert = argv[i + 1];
        if (strcmp(argv[i], "--tls-key") == 0) key = argv[i + 1];
    }
    char host[64];
    const char* colon = strrchr(where, ':');
    if (cert == NULL || key == NULL || colon == NULL || (size_t)(colon - where) >= sizeof host) {
        fprintf(stderr, "usage: tls_return_epoll HOST:PORT --tls-cert FILE --tls-key FILE\n");
        return 2;
    }
    memcpy(host, where, (size_t)(colon - where));
    host[colon - where] = '\0';
    signal(SIGPIPE, SIG_IGN);

    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx,
                            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char*)"epoll", 5);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "tls_return_epoll: cannot load %s / %s\n", cert, key);
        return 1;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tls_return_epoll: an IPv4 address, not %s\n", host);
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int on = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(listener, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(listener, 512) != 0) {
        perror("tls_return_epoll: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr*)&addr, &len);
    printf("listening on %s:%u\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    int epoll_fd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, 64, -1);
        for (int i = 0; i < n; ++i) {
            struct conn* c = events[i].data.ptr;
            if (c != NULL) {
                step(epoll_fd, c);
                continue;
            }
            for (;;) {
                int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) break;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
                c = calloc(1, sizeof *c);
                c->fd = fd;
                c->ssl = SSL_new(ctx);
                SSL_set_fd(c->ssl, fd);
                SSL_set_accept_state(c->ssl);
                c->phase = handshaking;
                struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &cev);
                step(epoll_fd, c);
            }
        }
    }
}
