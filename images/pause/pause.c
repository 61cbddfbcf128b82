/*
 * The pod sandbox's process: it holds the pod's namespaces open and does
 * nothing else. As PID 1 of the pod's PID namespace it reaps orphans, and it
 * exits on SIGINT or SIGTERM. The upstream pause image cannot be downloaded
 * here, so the node runs this one, built static (musl) by scripts/images.sh.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("pause (purchase-system)\n");
		return 0;
	}
	if (getpid() != 1) {
		fprintf(stderr, "pause: warning: not PID 1, orphans are not reaped here\n");
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;) {
		pause();
	}
}
