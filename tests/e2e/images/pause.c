/* The pod sandbox ("pause") process of the real e2e node. registry.k8s.io is not
 * reachable here, so containerd's sandbox image is built from this file: it holds the
 * pod's namespaces, reaps orphans (it is PID 1 when the pod shares its PID namespace)
 * and exits on SIGINT/SIGTERM, which is all Kubernetes' own pause does. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0)
    return 1;
  for (;;) pause();
}
