/* netcheck: the environment tests' container (image <registry>/fiberstack/netcheck), a static
 * program with no shell, like the product's images.
 *
 *   netcheck say LINE...       print each LINE to stdout, then sleep until SIGTERM
 *   netcheck serve PORT        answer every TCP connection on PORT with "hello from <hostname>"
 *   netcheck get HOST:PORT...  connect to each (HOST an IPv4 address or a DNS name, resolved
 *                              through /etc/resolv.conf with its search list, as a pod does),
 *                              print what it answered; retried for up to 20 s each (Services
 *                              and names may take a moment to be programmed); exit 1 if any
 *                              failed
 *   netcheck connect HOST:PORT...  as get, for servers that speak only when spoken to: a
 *                              connection is success
 *   netcheck hog MIB           allocate and touch MIB mebibytes, one at a time, printing
 *                              "holding N MiB" after each, then sleep until SIGTERM (a memory
 *                              limit below MIB gets it OOM-killed on the way)
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void on_term(void) {
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* An A record for name through the resolver (libresolv: no NSS, so it works statically). */
static int resolve(const char *name, struct in_addr *out, char *err, size_t errlen) {
    if (inet_pton(AF_INET, name, out) == 1) return 0;
    unsigned char answer[4096];
    if (!(_res.options & RES_INIT)) res_init();
    _res.retrans = 2;
    _res.retry = 1;
    int n = res_search(name, ns_c_in, ns_t_a, answer, sizeof answer);
    if (n < 0) {
        snprintf(err, errlen, "cannot resolve %s (%s)", name, hstrerror(h_errno));
        return -1;
    }
    ns_msg msg;
    if (ns_initparse(answer, n, &msg) < 0) {
        snprintf(err, errlen, "bad DNS answer for %s", name);
        return -1;
    }
    for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) == 0 && ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4) {
            memcpy(out, ns_rr_rdata(rr), 4);
            return 0;
        }
    }
    snprintf(err, errlen, "no A record for %s", name);
    return -1;
}

static int connect_only;

static int get_once(const char *host, int port, char *reply, size_t len, char *err, size_t errlen) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (resolve(host, &sa.sin_addr, err, errlen) < 0) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "connect %s:%d: %s", ip, port, strerror(errno));
        close(fd);
        return -1;
    }
    if (connect_only) {
        close(fd);
        printf("%s:%d (%s) connected\n", host, port, ip);
        fflush(stdout);
        return 0;
    }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < len && (r = read(fd, reply + got, len - 1 - got)) > 0) got += r;
    close(fd);
    reply[got] = 0;
    char *nl = strchr(reply, '\n');
    if (nl) *nl = 0;
    if (got == 0) {
        snprintf(err, errlen, "%s:%d closed without answering", ip, port);
        return -1;
    }
    printf("%s:%d (%s) answered: %s\n", host, port, ip, reply);
    fflush(stdout);
    return 0;
}

static int get(int argc, char **argv) {
    int failed = 0;
    for (int i = 0; i < argc; i++) {
        char host[256], reply[512], err[512] = "";
        const char *colon = strrchr(argv[i], ':');
        if (!colon || (size_t)(colon - argv[i]) >= sizeof host) {
            fprintf(stderr, "netcheck: %s: expected HOST:PORT\n", argv[i]);
            return 2;
        }
        memcpy(host, argv[i], colon - argv[i]);
        host[colon - argv[i]] = 0;
        int port = atoi(colon + 1), ok = 0;
        time_t deadline = time(NULL) + 20;
        for (int attempt = 0; !ok && (attempt == 0 || time(NULL) < deadline); attempt++) {
            if (attempt) sleep(1);
            ok = get_once(host, port, reply, sizeof reply, err, sizeof err) == 0;
        }
        if (!ok) {
            printf("%s FAILED: %s\n", argv[i], err);
            failed = 1;
        }
    }
    fflush(stdout);
    return failed;
}

static int serve(int port) {
    char name[256] = "?", line[300];
    gethostname(name, sizeof name);
    int n = snprintf(line, sizeof line, "hello from %s\n", name);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
        fprintf(stderr, "netcheck: cannot listen on :%d: %s\n", port, strerror(errno));
        return 1;
    }
    printf("serving on :%d as %s\n", port, name);
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        if (write(c, line, n) < 0) {}
        close(c);
    }
}

static int hog(int mib) {
    for (int i = 1; i <= mib; i++) {
        char *chunk = malloc(1 << 20);
        if (!chunk) { fprintf(stderr, "malloc failed at %d MiB\n", i); return 1; }
        memset(chunk, i, 1 << 20); /* touched: resident, charged to the cgroup */
        printf("holding %d MiB\n", i);
        fflush(stdout);
    }
    for (;;) pause();
}

int main(int argc, char **argv) {
    on_term();
    if (argc >= 2 && strcmp(argv[1], "say") == 0) {
        for (int i = 2; i < argc; i++) puts(argv[i]);
        fflush(stdout);
        for (;;) pause();
    }
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "get") == 0) return get(argc - 2, argv + 2);
    if (argc >= 3 && strcmp(argv[1], "connect") == 0) {
        connect_only = 1;
        return get(argc - 2, argv + 2);
    }
    if (argc == 3 && strcmp(argv[1], "hog") == 0) return hog(atoi(argv[2]));
    fputs("usage: netcheck say LINE... | serve PORT | get HOST:PORT... | connect HOST:PORT... | hog MIB\n", stderr);
    return 2;
}
