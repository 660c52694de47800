/*
 * io_trace.c: an LD_PRELOAD shim that records, in order, the calls that decide durability: writes
 * (pwrite, pwritev and their *64 names, write), hole punches (fallocate), syncs (fsync, fdatasync,
 * sync_file_range) and renames (rename, renameat, renameat2), for the durability tests
 * (test/durability.test.ts) to check the commit protocol of save, save --update and convert.
 *
 *   FXR_TRACE       the file the events are appended to, one line each, written with one write(2)
 *                   on an O_APPEND descriptor (lines of concurrent threads never interleave); each
 *                   event is logged after its call returned successfully, so the order of lines is
 *                   the order in which the calls completed.
 *   FXR_TRACE_PATH  only files whose path starts with this prefix are recorded (the test's dir).
 *   FXR_TRACE_DATA  optional: a file that receives the bytes of every recorded write; the write's
 *                   line then ends with " @<offset in this file>" (for replaying crash states).
 *
 * Lines: "W <path> <offset> <length> <flags>"   a write; <flags> is the u32 at byte 12 when the
 *                                               write covers bytes 0..15 (the header's flags), else -
 *        "P <path> <offset> <length>"           fallocate (punch)
 *        "D <path>" / "S <path>"                fdatasync / fsync (a directory too)
 *        "R <path> <offset> <length>"           sync_file_range
 *        "N <old> <new>"                        rename
 * Build: cc -shared -fPIC -O2 -o io_trace.so io_trace.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int g_fd = -1;
static int g_data = -1;
static long long g_data_end;
static const char *g_prefix;
static size_t g_prefix_len;

__attribute__((constructor)) static void Init(void) {
  const char *f = getenv("FXR_TRACE");
  if (f) g_fd = open(f, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  const char *d = getenv("FXR_TRACE_DATA");
  if (d) g_data = open(d, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  g_prefix = getenv("FXR_TRACE_PATH");
  g_prefix_len = g_prefix ? strlen(g_prefix) : 0;
}

static void *Real(const char *name) {
  void *p = dlsym(RTLD_NEXT, name);
  if (!p) {
    fprintf(stderr, "io_trace: no symbol %s\n", name);
    abort();
  }
  return p;
}

/* The path of fd into buf; 0 when it is not to be recorded. */
static int FdPath(int fd, char *buf, size_t size) {
  if (g_fd < 0 || fd == g_fd || fd == g_data) return 0;
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, buf, size - 1);
  if (n < 0) return 0;
  buf[n] = 0;
  return !g_prefix_len || !strncmp(buf, g_prefix, g_prefix_len);
}

static int PathOk(const char *p) { return g_fd >= 0 && p && (!g_prefix_len || !strncmp(p, g_prefix, g_prefix_len)); }

static void Emit(const char *line, int len) {
  int saved = errno;
  ssize_t (*w)(int, const void *, size_t) = (ssize_t(*)(int, const void *, size_t))Real("write");
  if (len > 0) (void)w(g_fd, line, (size_t)len);
  errno = saved;
}

/* Logs a completed write of `done` bytes at off; flags from the header bytes when it covers 0..15. */
static void LogWrite(int fd, off_t off, ssize_t done, const struct iovec *iov, int n) {
  char p[4096];
  if (done <= 0 || !FdPath(fd, p, sizeof p)) return;
  char flags[16] = "-";
  if (off == 0 && done >= 16) {
    unsigned char head[16];
    size_t got = 0;
    for (int i = 0; i < n && got < 16; ++i) {
      size_t take = iov[i].iov_len < 16 - got ? iov[i].iov_len : 16 - got;
      memcpy(head + got, iov[i].iov_base, take);
      got += take;
    }
    if (got == 16) snprintf(flags, sizeof flags, "%u", (unsigned)(head[12] | head[13] << 8 | head[14] << 16 | (uint32_t)head[15] << 24));
  }
  char blob[40] = "";
  if (g_data >= 0) {
    long long at = __atomic_fetch_add(&g_data_end, (long long)done, __ATOMIC_RELAXED);
    ssize_t (*pw)(int, const void *, size_t, off_t) = (ssize_t(*)(int, const void *, size_t, off_t))Real("pwrite64");
    long long left = done, pos = at;
    for (int i = 0; i < n && left > 0; ++i) {
      size_t take = iov[i].iov_len < (size_t)left ? iov[i].iov_len : (size_t)left;
      (void)pw(g_data, iov[i].iov_base, take, (off_t)pos);
      pos += (long long)take;
      left -= (long long)take;
    }
    snprintf(blob, sizeof blob, " @%lld", at);
  }
  char line[4200];
  int len = snprintf(line, sizeof line, "W %s %lld %lld %s%s\n", p, (long long)off, (long long)done, flags, blob);
  Emit(line, len);
}

static void LogFd(char kind, int fd) {
  char p[4096];
  if (!FdPath(fd, p, sizeof p)) return;
  char line[4200];
  Emit(line, snprintf(line, sizeof line, "%c %s\n", kind, p));
}

typedef ssize_t (*VecFn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*WriteFn)(int, const void *, size_t, off_t);

#define VEC(name)                                                       \
  ssize_t name(int fd, const struct iovec *iov, int n, off_t off) {     \
    ssize_t r = ((VecFn)Real(#name))(fd, iov, n, off);                  \
    LogWrite(fd, off, r, iov, n);                                       \
    return r;                                                           \
  }
VEC(pwritev)
VEC(pwritev64)

#define PW(name)                                                        \
  ssize_t name(int fd, const void *buf, size_t count, off_t off) {      \
    ssize_t r = ((WriteFn)Real(#name))(fd, buf, count, off);            \
    struct iovec one = {(void *)buf, count};                            \
    LogWrite(fd, off, r, &one, 1);                                      \
    return r;                                                           \
  }
PW(pwrite)
PW(pwrite64)

int fsync(int fd) {
  int r = ((int (*)(int))Real("fsync"))(fd);
  if (r == 0) LogFd('S', fd);
  return r;
}

int fdatasync(int fd) {
  int r = ((int (*)(int))Real("fdatasync"))(fd);
  if (r == 0) LogFd('D', fd);
  return r;
}

int sync_file_range(int fd, off_t off, off_t len, unsigned int flags) {
  int r = ((int (*)(int, off_t, off_t, unsigned int))Real("sync_file_range"))(fd, off, len, flags);
  char p[4096];
  if (r == 0 && FdPath(fd, p, sizeof p)) {
    char line[4200];
    Emit(line, snprintf(line, sizeof line, "R %s %lld %lld\n", p, (long long)off, (long long)len));
  }
  return r;
}

static void LogPunch(int fd, off_t off, off_t len) {
  char p[4096];
  if (!FdPath(fd, p, sizeof p)) return;
  char line[4200];
  Emit(line, snprintf(line, sizeof line, "P %s %lld %lld\n", p, (long long)off, (long long)len));
}

int fallocate(int fd, int mode, off_t off, off_t len) {
  int r = ((int (*)(int, int, off_t, off_t))Real("fallocate"))(fd, mode, off, len);
  if (r == 0) LogPunch(fd, off, len);
  return r;
}

int fallocate64(int fd, int mode, off_t off, off_t len) {
  int r = ((int (*)(int, int, off_t, off_t))Real("fallocate64"))(fd, mode, off, len);
  if (r == 0) LogPunch(fd, off, len);
  return r;
}

static void LogRename(const char *a, const char *b) {
  if (!PathOk(a) && !PathOk(b)) return;
  char line[8300];
  Emit(line, snprintf(line, sizeof line, "N %s %s\n", a, b));
}

int rename(const char *a, const char *b) {
  int r = ((int (*)(const char *, const char *))Real("rename"))(a, b);
  if (r == 0) LogRename(a, b);
  return r;
}

int renameat(int da, const char *a, int db, const char *b) {
  int r = ((int (*)(int, const char *, int, const char *))Real("renameat"))(da, a, db, b);
  if (r == 0) LogRename(a, b);
  return r;
}

int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
  int r = ((int (*)(int, const char *, int, const char *, unsigned int))Real("renameat2"))(da, a, db, b, flags);
  if (r == 0) LogRename(a, b);
  return r;
}
