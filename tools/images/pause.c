/* The process of every pod sandbox on the local node (tools/images.sh builds it into agentiam.local/pause).
 *
 * It holds the pod's namespaces open while the pod's containers come and go, so it must do nothing and never
 * exit on its own. When the pod shares one process namespace this is PID 1 there, and PID 1 inherits every
 * orphan: it reaps them, or they would stay zombies. SIGINT and SIGTERM end it (PID 1 gets no default action
 * for them, so without handlers a stop would wait for the kill timeout). Static, so the image holds nothing
 * else. */
#include <signal.h>
#include <stddef.h>
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

int main(void) {
  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = stop;
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) return 1;
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) != 0) return 1;
  for (;;) pause();
}
