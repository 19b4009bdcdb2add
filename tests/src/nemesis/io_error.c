/*
 * The fault suite's `io-error` fault: loaded into opsd with LD_PRELOAD, it
 * makes write, pwrite, writev, fsync, fdatasync and sync_file_range fail
 * with EIO on files under one directory (the node's data dir), while a
 * control file exists. The suite creates the control file to deal the fault
 * and deletes it to heal, without restarting the process.
 *
 *   NEMESIS_IO_ERROR_DIR   the directory, as an absolute path ending in '/'
 *   NEMESIS_IO_ERROR_FILE  the control file
 *
 * Without both variables, or without the control file, every call goes
 * straight to the C library. The suite compiles this file with `cc` into
 * target/nemesis/ (tests/src/nemesis/storage.rs).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* True if calls on `fd` must fail now. Leaves errno as it found it. */
static int failing(int fd) {
    const char *control = getenv("NEMESIS_IO_ERROR_FILE");
    const char *dir = getenv("NEMESIS_IO_ERROR_DIR");
    if (control == NULL || dir == NULL) {
        return 0;
    }
    int saved = errno;
    int fail = 0;
    if (access(control, F_OK) == 0) {
        char link[64];
        char path[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) {
            path[n] = '\0';
            fail = strncmp(path, dir, strlen(dir)) == 0;
        }
    }
    errno = saved;
    return fail;
}

#define REAL(name)                                                                                                     \
    static __typeof__(name) *real;                                                                                     \
    if (real == NULL) {                                                                                                \
        real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                                                            \
    }

#define FAIL_IF_FAILING(fd)                                                                                            \
    if (failing(fd)) {                                                                                                 \
        errno = EIO;                                                                                                   \
        return -1;                                                                                                     \
    }

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    FAIL_IF_FAILING(fd);
    return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    FAIL_IF_FAILING(fd);
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    REAL(pwrite64);
    FAIL_IF_FAILING(fd);
    return real(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev);
    FAIL_IF_FAILING(fd);
    return real(fd, iov, iovcnt);
}

int fsync(int fd) {
    REAL(fsync);
    FAIL_IF_FAILING(fd);
    return real(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    FAIL_IF_FAILING(fd);
    return real(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    REAL(sync_file_range);
    FAIL_IF_FAILING(fd);
    return real(fd, offset, nbytes, flags);
}
