/* Echo load client: keeps W requests outstanding on one connected socket.
 * usage: echo_client HOST PORT WINDOW SECONDS SIZE BUSY
 * Each request carries a sequence number and its send time; a reply is matched by
 * sequence number and its round trip recorded.  BUSY=1 spins on non-blocking
 * receive, BUSY=0 sleeps in poll.  A window that sees no reply for 20 ms counts
 * its requests as lost and is refilled.  Prints RESULT {...} (rates, p50/p99 in us). */
#include "common.h"
#define BATCH 64
#define BUFSIZE 2048
#define MAX_SAMPLES (32u * 1024u * 1024u)

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: echo_client HOST PORT WINDOW SECONDS SIZE BUSY\n"); return 2; }
    int window = atoi(argv[3]);
    double seconds = atof(argv[4]);
    int size = atoi(argv[5]);
    int busy = atoi(argv[6]);
    if (window < 1 || window > BATCH || size < 16 || size > BUFSIZE) { fprintf(stderr, "bad args\n"); return 2; }
    install_stop();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    uint32_t *samples = malloc(MAX_SAMPLES * sizeof *samples);
    size_t nsamples = 0;
    static char rbufs[BATCH][BUFSIZE];
    static char sbufs[BATCH][BUFSIZE];
    struct iovec riov[BATCH], siov[BATCH];
    struct mmsghdr rmsgs[BATCH], smsgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(sbufs[i], 'x', BUFSIZE);
        siov[i].iov_base = sbufs[i];
        siov[i].iov_len = (size_t)size;
        memset(&smsgs[i], 0, sizeof smsgs[i]);
        smsgs[i].msg_hdr.msg_iov = &siov[i];
        smsgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t seq = 0, first_live = 0; /* replies with seq < first_live are stale */
    unsigned long long sent = 0, replies = 0, lost = 0, stale = 0, bad = 0;
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9), last_reply = start;
    int outstanding = 0;
    uint64_t t = start;
    while (!g_stop && (t = now_ns()) < end) {
        /* Refill the window with one sendmmsg. */
        int want = window - outstanding;
        if (want > 0) {
            for (int i = 0; i < want; i++) {
                uint64_t s = seq + (uint64_t)i, ts = now_ns();
                memcpy(sbufs[i], &s, 8);
                memcpy(sbufs[i] + 8, &ts, 8);
            }
            int done = 0;
            while (done < want) {
                int r = sendmmsg(fd, smsgs + done, (unsigned)(want - done), 0);
                if (r < 0) { if (errno == EINTR || errno == ECONNREFUSED) continue; perror("sendmmsg"); return 1; }
                done += r;
            }
            seq += (uint64_t)want;
            sent += (unsigned long long)want;
            outstanding = window;
        }
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = rbufs[i];
            riov[i].iov_len = BUFSIZE;
            memset(&rmsgs[i].msg_hdr, 0, sizeof rmsgs[i].msg_hdr);
            rmsgs[i].msg_hdr.msg_iov = &riov[i];
            rmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, rmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) { perror("recvmmsg"); return 1; }
            if (t - last_reply > 20000000ull) { /* 20 ms silence: the window is lost */
                lost += (unsigned long long)outstanding;
                outstanding = 0;
                first_live = seq;
                last_reply = t;
            } else if (!busy) {
                struct pollfd p = {fd, POLLIN, 0};
                poll(&p, 1, 5);
            }
            continue;
        }
        uint64_t rt = now_ns();
        last_reply = rt;
        for (int i = 0; i < n; i++) {
            uint64_t s, ts;
            if (rmsgs[i].msg_len != (unsigned)size) { bad++; continue; }
            memcpy(&s, rbufs[i], 8);
            memcpy(&ts, rbufs[i] + 8, 8);
            if (s < first_live || s >= seq) { stale++; continue; }
            replies++;
            outstanding--;
            if (nsamples < MAX_SAMPLES) samples[nsamples++] = (uint32_t)((rt - ts) > 0xffffffffu ? 0xffffffffu : (rt - ts));
        }
        if (outstanding < 0) outstanding = 0;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    qsort(samples, nsamples, sizeof *samples, cmp_u32);
    double p50 = nsamples ? samples[nsamples / 2] / 1000.0 : -1;
    double p99 = nsamples ? samples[(size_t)((double)nsamples * 0.99)] / 1000.0 : -1;
    double p999 = nsamples ? samples[(size_t)((double)nsamples * 0.999)] / 1000.0 : -1;
    double pmax = nsamples ? samples[nsamples - 1] / 1000.0 : -1;
    double sum = 0;
    for (size_t i = 0; i < nsamples; i++) sum += samples[i];
    double mean = nsamples ? sum / (double)nsamples / 1000.0 : -1;
    printf("RESULT {\"sent\": %llu, \"replies\": %llu, \"lost\": %llu, \"stale\": %llu, \"malformed\": %llu,"
           " \"seconds\": %.6f, \"rate\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f,"
           " \"p999_us\": %.2f, \"max_us\": %.2f, \"mean_us\": %.2f}\n",
           sent, replies, lost, stale, bad, elapsed, (double)replies / elapsed, p50, p99, p999,
           pmax, mean);
    fflush(stdout);
    return 0;
}
