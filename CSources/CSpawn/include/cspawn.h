/*
 * cspawn.h: starts a service process already inside its cgroups, for ServiceRuntime.
 *
 * Why C: between fork and exec the child of a multithreaded Swift process may only make async-signal-safe
 * calls (another thread may hold the malloc or Swift runtime locks at the moment of fork). Everything the
 * child needs (argv, envp, the executable candidates, the cgroup.procs paths) is prepared by the caller
 * before the fork; the child only makes raw system calls.
 *
 * The child joins its cgroups before it execs, so no process of the service ever runs outside its limits:
 * with cgroup v2 through clone3(CLONE_INTO_CGROUP), otherwise (cgroup v1, or a kernel without clone3) by
 * writing its own pid into each cgroup.procs file. An exec failure travels back to the parent over a
 * close-on-exec pipe, so the caller learns "command not found" synchronously.
 *
 * Names are prefixed cspawn_ / CSPAWN_. Functions return 0 or a positive errno.
 */
#ifndef CSPAWN_H
#define CSPAWN_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The step of the child's setup that failed (cspawn_result.stage). */
enum cspawn_stage {
    CSPAWN_STAGE_NONE = 0,
    CSPAWN_STAGE_PIPE = 1,     /* the parent could not make the error pipe */
    CSPAWN_STAGE_FORK = 2,     /* fork/clone3 failed (EAGAIN: too many processes; v2: the cgroup refused) */
    CSPAWN_STAGE_PIDFD = 3,    /* pidfd_open failed in the parent */
    CSPAWN_STAGE_SETSID = 4,
    CSPAWN_STAGE_CGROUP = 5,   /* writing the pid into a cgroup.procs file */
    CSPAWN_STAGE_CHDIR = 6,
    CSPAWN_STAGE_STDIO = 7,
    CSPAWN_STAGE_EXEC = 8,     /* every candidate failed; error is the most telling errno (ENOENT: not found) */
};

struct cspawn_request {
    /* Paths handed to execve in order until one works, NULL-terminated: the PATH search done by the caller
     * (the child must not allocate). ENOENT, ENOTDIR and EACCES move on to the next candidate. */
    const char *const *candidates;
    char *const *argv;               /* NULL-terminated */
    char *const *envp;               /* NULL-terminated */
    const char *cwd;                 /* NULL: stay in the caller's directory */
    const char *const *cgroup_procs; /* cgroup.procs files the child writes its pid into; NULL-terminated */
    int cgroup_fd;                   /* an O_DIRECTORY fd of a cgroup v2 directory for clone3, or -1 */
    int stdin_fd, stdout_fd, stderr_fd; /* become the child's 0, 1 and 2 */
};

struct cspawn_result {
    pid_t pid;    /* > 0 when the exec succeeded */
    int pidfd;    /* a pidfd of the child (close-on-exec), owned by the caller */
    int stage;    /* enum cspawn_stage of the failure, CSPAWN_STAGE_NONE on success */
    int error;    /* errno of the failure */
    int joined_by_clone3; /* 1 when clone3(CLONE_INTO_CGROUP) placed the child */
};

/* Starts the process. On success returns 0 and fills pid and pidfd; the child is in its own session
 * (pgid == pid), in its cgroups, in cwd, with default signal dispositions, an empty signal mask and only
 * fds 0-2 open. On failure returns the errno, the failed child (if any) has been reaped, and no fd leaks. */
int cspawn_spawn(const struct cspawn_request *req, struct cspawn_result *res);

/* Reaps the child behind pidfd. nohang: 1 returns EAGAIN when it is still running. On success *killed is
 * 1 when a signal ended it (*code is the signal number), 0 when it exited (*code is the exit status). */
int cspawn_reap(int pidfd, int nohang, int *killed, int *code);

/* Sends sig to the process behind pidfd (no pid-reuse race). ESRCH when it has already exited. */
int cspawn_pidfd_kill(int pidfd, int sig);

/* Waits up to timeout_ms (-1: forever) for the process behind pidfd to exit. Returns 0 when it exited,
 * ETIMEDOUT when not. */
int cspawn_pidfd_wait(int pidfd, int timeout_ms);

/* A pidfd of any process (not only a child of ours), close-on-exec left to the caller; -errno on failure. */
int cspawn_pidfd_open(pid_t pid);

/* A pipe for a child's output: both ends close-on-exec, the read end (fds[0]) non-blocking. */
int cspawn_output_pipe(int fds[2]);

/* A non-blocking, close-on-exec eventfd (to wake a poll loop); returns the fd or -errno. */
int cspawn_eventfd(void);

#ifdef __cplusplus
}
#endif

#endif
