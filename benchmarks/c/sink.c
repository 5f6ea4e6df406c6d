/* C sink yardstick: recvmmsg in batches of 64, optionally with UDP GRO.
 * usage: sink PORT RCVBUF {mmsg|gro}; prints READY <port>, then on SIGTERM
 * RESULT {"received": N, "bytes": B, "calls": C}. */
#include "common.h"
#include <netinet/udp.h>
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define BATCH 64

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: sink PORT RCVBUF mmsg|gro\n"); return 2; }
    int gro = strcmp(argv[3], "gro") == 0;
    install_stop();
    int fd = bind_ready(atoi(argv[1]), atoi(argv[2]), gro);
    size_t bufsize = gro ? 65536 : 2048;
    char *bufs = malloc(BATCH * bufsize);
    static char ctl[BATCH][64];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    unsigned long long received = 0, bytes = 0, calls = 0;
    while (!g_stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs + i * bufsize;
            iov[i].iov_len = bufsize;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR) { perror("recvmmsg"); break; }
            wait_readable(fd);
            continue;
        }
        calls++;
        for (int i = 0; i < n; i++) {
            unsigned len = msgs[i].msg_len;
            unsigned seg = 0;
            if (gro) {
                struct msghdr *h = &msgs[i].msg_hdr;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
                    if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO)
                        memcpy(&seg, CMSG_DATA(c), sizeof(int));
            }
            received += (seg && len) ? (len + seg - 1) / seg : 1;
            bytes += len;
        }
    }
    printf("RESULT {\"received\": %llu, \"bytes\": %llu, \"calls\": %llu}\n", received, bytes, calls);
    fflush(stdout);
    return 0;
}
