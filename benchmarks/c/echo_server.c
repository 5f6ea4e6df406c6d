/* C echo yardstick: recvmmsg a batch, sendmmsg it straight back to each sender.
 * usage: echo_server PORT RCVBUF {mmsg|busy}; "busy" spins on non-blocking receive
 * instead of sleeping in poll.  Prints READY <port>; on SIGTERM RESULT {...}. */
#include "common.h"
#define BATCH 64
#define BUFSIZE 2048

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: echo_server PORT RCVBUF mmsg|busy\n"); return 2; }
    int busy = strcmp(argv[3], "busy") == 0;
    install_stop();
    int fd = bind_ready(atoi(argv[1]), atoi(argv[2]), 0);
    static char bufs[BATCH][BUFSIZE];
    static struct sockaddr_storage names[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    unsigned long long received = 0, sent = 0, send_errors = 0;
    while (!g_stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = BUFSIZE;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof names[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR) { perror("recvmmsg"); break; }
            if (!busy) wait_readable(fd);
            continue;
        }
        received += (unsigned long long)n;
        for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
        int done = 0;
        while (done < n) {
            int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                send_errors++;
                done++;
                continue;
            }
            done += r;
            sent += (unsigned long long)r;
        }
    }
    printf("RESULT {\"received\": %llu, \"sent\": %llu, \"send_errors\": %llu}\n", received, sent,
           send_errors);
    fflush(stdout);
    return 0;
}
