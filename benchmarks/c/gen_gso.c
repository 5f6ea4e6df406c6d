/* C load generator (optional yardstick): sendmmsg of UDP GSO buffers, 64 segments each.
 * usage: gen_gso PORT SIZE SECONDS; prints RESULT {"sent": N, "seconds": T, "rate": R}.
 * "sent" counts datagrams (segments) the kernel accepted. */
#include "common.h"
#include <netinet/udp.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MSGS 64

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: gen_gso PORT SIZE SECONDS\n"); return 2; }
    int size = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (size < 1 || size > 1472) { fprintf(stderr, "bad size\n"); return 2; }
    int segs = 64;
    if (segs * size > 65000) segs = 65000 / size;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    char *buf = malloc((size_t)(segs * size));
    memset(buf, 'x', (size_t)(segs * size));
    static char ctl[MSGS][CMSG_SPACE(sizeof(uint16_t))];
    struct iovec iov[MSGS];
    struct mmsghdr msgs[MSGS];
    for (int i = 0; i < MSGS; i++) {
        iov[i].iov_base = buf;
        iov[i].iov_len = (size_t)(segs * size);
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = ctl[i];
        msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
        struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
        c->cmsg_level = IPPROTO_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t s16 = (uint16_t)size;
        memcpy(CMSG_DATA(c), &s16, sizeof s16);
    }
    unsigned long long sent = 0;
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9);
    while (now_ns() < end) {
        int r = sendmmsg(fd, msgs, MSGS, 0);
        if (r < 0) {
            if (errno == EINTR || errno == ECONNREFUSED || errno == EAGAIN) continue;
            perror("sendmmsg");
            return 1;
        }
        sent += (unsigned long long)r * (unsigned long long)segs;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    printf("RESULT {\"sent\": %llu, \"seconds\": %.6f, \"rate\": %.1f}\n", sent, elapsed,
           (double)sent / elapsed);
    fflush(stdout);
    return 0;
}
