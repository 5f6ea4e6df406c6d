/* Shared bits of the C yardsticks: bind, READY line, SIGTERM flag, clock. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop;

static inline void on_signal(int sig) { (void)sig; g_stop = 1; }

static inline void install_stop(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a blocking call returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Bind a UDP socket on 127.0.0.1:port (0 = any free port), print "READY <port>". */
/* Bind 127.0.0.1:port, set every option (UDP GRO with gro != 0), then say READY:
 * the runner may stop the process the moment it reads READY. */
#include <netinet/udp.h>
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

static inline int bind_ready(int port, int rcvbuf, int gro) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    if (rcvbuf > 0) {
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (gro && setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof one) < 0) { perror("UDP_GRO"); exit(1); }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

/* Sleep until readable or 100 ms passed, so SIGTERM is noticed promptly. */
static inline void wait_readable(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, 100);
}
