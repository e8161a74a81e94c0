/* Fault injection for tests/test_bad_inputs.py: LD_PRELOAD this to make read() of the file
 * whose path ends with $EIO_FILE fail with EIO from byte $EIO_OFFSET on, as a failing disk
 * or network file system does. Built by the test with the system C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int fds[1024];
static int is_target(const char *path) {
    const char *t = getenv("EIO_FILE");
    if (!t || !path) return 0;
    size_t n = strlen(path), m = strlen(t);
    return n >= m && strcmp(path + n - m, t) == 0;
}
#define WRAP_OPEN(name) \
int name(const char *path, int flags, ...) { \
    static int (*real)(const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); \
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap); \
    int fd = real(path, flags, mode); \
    if (fd >= 0 && fd < 1024) fds[fd] = is_target(path); \
    return fd; }
WRAP_OPEN(open)
WRAP_OPEN(open64)
ssize_t read(int fd, void *buf, size_t count) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "read");
    if (fd >= 0 && fd < 1024 && fds[fd]) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        long at = atol(getenv("EIO_OFFSET") ? getenv("EIO_OFFSET") : "0");
        if (pos + (off_t)count > at) {
            if (pos < at) return real(fd, buf, at - pos);
            errno = EIO; return -1;
        }
    }
    return real(fd, buf, count);
}
