/* faultfs: an LD_PRELOAD shim that makes file system calls of the process fail
 * on demand, so the fault tests (tests/faults.rs) exercise weir's real binary and
 * its real storage engine against real errno values.
 *
 * WEIR_FAULTFS_DIR names a control directory; while a file exists in it, the
 * matching fault is on:
 *   enospc     write/pwrite/writev/fallocate fail with ENOSPC
 *              (ftruncate is left alone: growing a sparse file needs no blocks)
 *   emfile     open/openat/creat fail with EMFILE (process-wide, as a real
 *              shortage of descriptors would)
 *   eio_fsync  fsync/fdatasync fail with EIO
 * ENOSPC and EIO hit only files under WEIR_FAULTFS_ROOT (the data directory), so
 * logs, pipes and sockets keep working.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char p_enospc[PATH_MAX], p_emfile[PATH_MAX], p_eio_fsync[PATH_MAX];
static char root[PATH_MAX];
static size_t root_len;
static int configured;

__attribute__((constructor)) static void faultfs_init(void) {
    const char *dir = getenv("WEIR_FAULTFS_DIR");
    if (!dir) return;
    snprintf(p_enospc, sizeof p_enospc, "%s/enospc", dir);
    snprintf(p_emfile, sizeof p_emfile, "%s/emfile", dir);
    snprintf(p_eio_fsync, sizeof p_eio_fsync, "%s/eio_fsync", dir);
    const char *r = getenv("WEIR_FAULTFS_ROOT");
    if (!r || !realpath(r, root)) return;
    root_len = strlen(root);
    configured = 1;
}

static int on(const char *path) {
    struct stat st;
    return configured && stat(path, &st) == 0;
}

/* Whether fd is a file or directory under the root. */
static int is_file(int fd) {
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = 0;
    return strncmp(target, root, root_len) == 0 && (target[root_len] == '/' || target[root_len] == 0);
}

#define REAL(name, ret, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

#define FAIL_IF(cond, err) \
    do { if (cond) { errno = (err); return -1; } } while (0)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write, ssize_t, int, const void *, size_t);
    FAIL_IF(on(p_enospc) && is_file(fd), ENOSPC);
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    FAIL_IF(on(p_enospc) && is_file(fd), ENOSPC);
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    FAIL_IF(on(p_enospc) && is_file(fd), ENOSPC);
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev, ssize_t, int, const struct iovec *, int);
    FAIL_IF(on(p_enospc) && is_file(fd), ENOSPC);
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
    FAIL_IF(on(p_enospc) && is_file(fd), ENOSPC);
    return real_pwritev(fd, iov, cnt, off);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    REAL(fallocate, int, int, int, off_t, off_t);
    FAIL_IF(on(p_enospc), ENOSPC);
    return real_fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len) {
    REAL(fallocate64, int, int, int, off_t, off_t);
    FAIL_IF(on(p_enospc), ENOSPC);
    return real_fallocate64(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len) {
    REAL(posix_fallocate, int, int, off_t, off_t);
    if (on(p_enospc)) return ENOSPC;
    return real_posix_fallocate(fd, off, len);
}

int fsync(int fd) {
    REAL(fsync, int, int);
    FAIL_IF(on(p_eio_fsync) && is_file(fd), EIO);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    FAIL_IF(on(p_eio_fsync) && is_file(fd), EIO);
    return real_fdatasync(fd);
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    FAIL_IF(on(p_emfile), EMFILE);
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(open64, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    FAIL_IF(on(p_emfile), EMFILE);
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    FAIL_IF(on(p_emfile), EMFILE);
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    FAIL_IF(on(p_emfile), EMFILE);
    return real_openat64(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode) {
    REAL(creat, int, const char *, mode_t);
    FAIL_IF(on(p_emfile), EMFILE);
    return real_creat(path, mode);
}
