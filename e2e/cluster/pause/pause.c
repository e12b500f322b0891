/* The pod sandbox ("pause") image's only program. It holds the pod's namespaces open: it
 * sleeps until the runtime stops it (SIGINT or SIGTERM: exit 0) and, being PID 1 of pods
 * that share their PID namespace, reaps the zombies re-parented to it. Built statically
 * (`gcc -static -Os`) into a FROM-scratch image by e2e/scripts/nodes.sh: nothing can be
 * pulled from the internet here, not even registry.k8s.io/pause. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (fiberstack) 3.10");
        return 0;
    }
    if (getpid() != 1) fputs("pause: warning: not PID 1\n", stderr);
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
    for (;;) pause();
}
