/*
 * cspawn.c: see include/cspawn.h. The child side (child_setup_and_exec) runs between fork and exec of a
 * multithreaded process: it makes only async-signal-safe system calls and touches no heap.
 */
#define _GNU_SOURCE
#include "cspawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#define CSPAWN_CLONE_INTO_CGROUP 0x200000000ULL
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* struct clone_args of Linux >= 5.7 (CLONE_INTO_CGROUP), spelled out so old uapi headers do not matter. */
struct cspawn_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
        cgroup;
};

struct child_failure {
    int stage;
    int error;
};

__attribute__((noreturn)) static void child_fail(int errfd, int stage, int error) {
    struct child_failure f = {stage, error};
    ssize_t n;
    do {
        n = write(errfd, &f, sizeof f);
    } while (n < 0 && errno == EINTR);
    _exit(127);
}

/* Decimal pid into buf without snprintf (not async-signal-safe). Returns the length. */
static size_t format_pid(pid_t pid, char *buf) {
    char tmp[16];
    size_t n = 0, len = 0;
    unsigned long v = (unsigned long)pid;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && n < sizeof tmp);
    while (n > 0) buf[len++] = tmp[--n];
    return len;
}

static int write_pid_to(const char *procs, pid_t pid) {
    char buf[16];
    size_t len = format_pid(pid, buf);
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ssize_t n;
    do {
        n = write(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    int e = n < 0 ? errno : 0;
    close(fd);
    return e;
}

static void close_from(int first, int keep) {
    /* Everything from `first` up, except `keep` (the error pipe, close-on-exec). */
    if (keep >= first) {
        if (keep > first && syscall(SYS_close_range, (unsigned)first, (unsigned)(keep - 1), 0u) != 0) {
            for (int fd = first; fd < keep; fd++) close(fd);
        }
        first = keep + 1;
    }
    if (syscall(SYS_close_range, (unsigned)first, ~0u, 0u) != 0) {
        struct rlimit rl;
        int max = 65536;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)max)
            max = (int)rl.rlim_cur;
        for (int fd = first; fd < max; fd++) close(fd);
    }
}

__attribute__((noreturn)) static void child_setup_and_exec(const struct cspawn_request *req, int errfd,
                                                           int in_cgroup) {
    /* Handlers installed by the parent (and SIG_IGN, which survives exec: the Swift runtime ignores
     * SIGPIPE) must not leak into the service. All signals are still blocked here, see cspawn_spawn. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL); /* glibc's reserved signals answer EINVAL: harmless */
    }

    /* First of all, so that nothing this process does (and no child it forks) escapes the limits. */
    if (!in_cgroup && req->cgroup_procs) {
        pid_t self = getpid();
        for (const char *const *p = req->cgroup_procs; *p; p++) {
            int e = write_pid_to(*p, self);
            if (e) child_fail(errfd, CSPAWN_STAGE_CGROUP, e);
        }
    }

    /* Its own session and process group: stop() can signal the whole group, and the agent's terminal
     * signals (^C) do not reach the service. */
    if (setsid() < 0) child_fail(errfd, CSPAWN_STAGE_SETSID, errno);

    /* Lift every fd we keep above 2 first, so that the dup2s below cannot clobber one another. */
    int high_err = fcntl(errfd, F_DUPFD_CLOEXEC, 10);
    if (high_err < 0) child_fail(errfd, CSPAWN_STAGE_STDIO, errno);
    errfd = high_err;
    int src[3] = {req->stdin_fd, req->stdout_fd, req->stderr_fd};
    int lifted[3];
    for (int i = 0; i < 3; i++) {
        lifted[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 10);
        if (lifted[i] < 0) child_fail(errfd, CSPAWN_STAGE_STDIO, errno);
    }

    if (req->cwd && chdir(req->cwd) != 0) child_fail(errfd, CSPAWN_STAGE_CHDIR, errno);

    for (int i = 0; i < 3; i++) {
        if (dup2(lifted[i], i) < 0) child_fail(errfd, CSPAWN_STAGE_STDIO, errno);
    }
    close_from(3, errfd);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int best = ENOENT;
    for (const char *const *c = req->candidates; c && *c; c++) {
        execve(*c, req->argv, req->envp);
        int e = errno;
        if (e == ENOENT || e == ENOTDIR) continue;
        if (e == EACCES) {
            best = EACCES; /* execvp's rule: a later hit wins, else "permission denied" beats "not found" */
            continue;
        }
        best = e;
        break;
    }
    child_fail(errfd, CSPAWN_STAGE_EXEC, best);
}

static int fail(struct cspawn_result *res, int stage, int error) {
    res->pid = -1;
    res->pidfd = -1;
    res->stage = stage;
    res->error = error;
    return error;
}

int cspawn_spawn(const struct cspawn_request *req, struct cspawn_result *res) {
    res->joined_by_clone3 = 0;
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) != 0) return fail(res, CSPAWN_STAGE_PIPE, errno);

    /* Block every signal across the fork so the child cannot run one of the parent's handlers before it
     * has reset them; the parent's own mask is restored right after. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    pid_t pid = -1;
    int pidfd = -1;
    if (req->cgroup_fd >= 0) {
        struct cspawn_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_PIDFD | CSPAWN_CLONE_INTO_CGROUP;
        args.pidfd = (uint64_t)(uintptr_t)&pidfd;
        args.exit_signal = SIGCHLD;
        args.cgroup = (uint64_t)req->cgroup_fd;
        long r = syscall(SYS_clone3, &args, sizeof args);
        if (r == 0) child_setup_and_exec(req, errpipe[1], 1);
        if (r > 0) {
            pid = (pid_t)r;
            res->joined_by_clone3 = 1;
        } else {
            int e = errno;
            /* A kernel without clone3 or CLONE_INTO_CGROUP: fall back to fork + cgroup.procs below. */
            if (!(e == ENOSYS || e == E2BIG || e == EINVAL) || !req->cgroup_procs) {
                pthread_sigmask(SIG_SETMASK, &old, NULL);
                close(errpipe[0]);
                close(errpipe[1]);
                return fail(res, CSPAWN_STAGE_FORK, e);
            }
            pidfd = -1;
        }
    }
    if (pid < 0) {
        pid = fork();
        if (pid == 0) child_setup_and_exec(req, errpipe[1], 0);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(errpipe[1]);
    if (pid < 0) {
        close(errpipe[0]);
        return fail(res, CSPAWN_STAGE_FORK, fork_errno);
    }
    struct child_failure f;
    ssize_t n;
    do {
        n = read(errpipe[0], &f, sizeof f);
    } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n == (ssize_t)sizeof f) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (pidfd >= 0) close(pidfd);
        return fail(res, f.stage, f.error);
    }

    if (pidfd < 0) {
        /* Not yet reaped, so the pid cannot have been reused. */
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) {
            int e = errno;
            int st;
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
            }
            return fail(res, CSPAWN_STAGE_PIDFD, e);
        }
        (void)fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    }
    res->pid = pid;
    res->pidfd = pidfd;
    res->stage = CSPAWN_STAGE_NONE;
    res->error = 0;
    return 0;
}

int cspawn_reap(int pidfd, int nohang, int *killed, int *code) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    do {
        r = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED | (nohang ? WNOHANG : 0));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno;
    if (si.si_pid == 0) return EAGAIN;
    if (si.si_code == CLD_EXITED) {
        *killed = 0;
        *code = si.si_status;
    } else {
        *killed = 1;
        *code = si.si_status;
    }
    return 0;
}

int cspawn_pidfd_kill(int pidfd, int sig) {
    if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) != 0) return errno;
    return 0;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int cspawn_pidfd_wait(int pidfd, int timeout_ms) {
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int left = -1;
        if (deadline >= 0) {
            long long l = deadline - now_ms();
            left = l < 0 ? 0 : (int)l;
        }
        struct pollfd p = {.fd = pidfd, .events = POLLIN, .revents = 0};
        int r = poll(&p, 1, left);
        if (r > 0) return 0;
        if (r == 0) return ETIMEDOUT;
        if (errno != EINTR) return errno;
    }
}

int cspawn_output_pipe(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) return errno;
    int fl = fcntl(fds[0], F_GETFL);
    if (fl < 0 || fcntl(fds[0], F_SETFL, fl | O_NONBLOCK) != 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return e;
    }
    return 0;
}

int cspawn_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int cspawn_pidfd_open(pid_t pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}
