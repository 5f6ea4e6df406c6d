/* The cost of one system call, without Python: ns per getppid() and per non-blocking
 * recvfrom() on an empty UDP socket (fails with EAGAIN), each the median of 5 runs.
 * usage: syscost [ITERATIONS]; prints RESULT {"getppid_ns": ..., "recvfrom_eagain_ns": ...}.
 * The figures benchmarks/run.py prints next to the Python ones (same loops there). */
#include "common.h"
#include <sys/syscall.h>

#define RUNS 5

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v) {
    qsort(v, RUNS, sizeof v[0], cmp_double);
    return v[RUNS / 2];
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (n <= 0) n = 200000;
    double t[RUNS];
    volatile long sink = 0;

    for (int r = 0; r < RUNS; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) sink += syscall(SYS_getppid); /* a real system call */
        t[r] = (double)(now_ns() - t0) / (double)n;
    }
    double getppid_ns = median(t);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    char buf[2048];
    struct sockaddr_in from;
    for (int r = 0; r < RUNS; r++) {
        long eagain = 0;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) {
            socklen_t len = sizeof from;
            if (recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len) < 0 &&
                errno == EAGAIN)
                eagain++;
        }
        t[r] = (double)(now_ns() - t0) / (double)n;
        if (eagain != n) { fprintf(stderr, "recvfrom did not fail with EAGAIN\n"); return 1; }
    }
    double recvfrom_ns = median(t);
    close(fd);
    printf("RESULT {\"getppid_ns\": %.1f, \"recvfrom_eagain_ns\": %.1f, \"iterations\": %ld}\n",
           getppid_ns, recvfrom_ns, n);
    return sink == -1; /* keep the loop */
}
