/*
 * short_io.c: an LD_PRELOAD shim for fixedram's fault tests (catalogue #5, #19, #17).
 *
 * Interposes pwritev, pwritev64, preadv, preadv64, pread, pread64, pwrite, pwrite64 (node-gyp builds
 * with _FILE_OFFSET_BITS=64, so the addon calls the *64 names; Node's own fs calls go through libuv's
 * pread64/pwrite64), plus open/open64/openat/openat64 and fallocate/fallocate64 for the O_DIRECT and
 * hole-punch cases, and lseek/lseek64 for extent walks. Every behaviour is off unless an environment variable asks for it:
 *
 *   FXR_SHIM_FUNCS     comma list of the calls to disturb, by base name: pwritev,preadv,pread,pwrite
 *                      (default: pwritev,preadv). "pwritev" covers pwritev and pwritev64, and so on.
 *   FXR_SHIM_MODE      comma list of behaviours used in turn, one per disturbed call:
 *                        short   transfer about half of the request (at least 1 byte)
 *                        onebyte transfer 1 byte
 *                        eintr   fail with EINTR, transferring nothing
 *                        eagain  fail with EAGAIN, transferring nothing
 *                        full    pass the call through unchanged
 *                      e.g. "eintr,short,full,onebyte". Unset: every call passes through.
 *   FXR_SHIM_DELAY_US  sleep this long before every disturbed call (to make a run slow enough to
 *                      signal or race it from a test).
 *   FXR_SHIM_DIRECT    "refuse-open": open with O_DIRECT fails with EINVAL (a file system without
 *                      direct I/O); "einval-io": disturbed calls on an O_DIRECT descriptor fail with
 *                      EINVAL (a file system that accepts the open but refuses the transfer).
 *   FXR_SHIM_FALLOCATE "eopnotsupp": fallocate fails with EOPNOTSUPP (no hole punching).
 *   FXR_SHIM_LSEEK     "eio:N": from the Nth lseek with SEEK_DATA or SEEK_HOLE on (with
 *                      FXR_SHIM_PATH) a matching file on, every such lseek fails with EIO (an
 *                      extent walk that fails half-way).
 *   FXR_SHIM_PATH      only disturb descriptors (and opens) of files whose path starts with this
 *                      prefix, e.g. the test's temp dir (Node's own module loading reads package.json
 *                      with pread and does not retry short reads, so it must stay undisturbed).
 *   FXR_SHIM_REPORT    a file; at exit one line "calls=N short=N eintr=N eagain=N direct=N
 *                      fallocate=N dopen=N" is appended, so a test can prove the faults were
 *                      injected (dopen: opens with O_DIRECT that succeeded, i.e. direct I/O was
 *                      really used). The first delayed call appends "delayed=1" at once (a run
 *                      killed by SIGKILL never reaches the exit line).
 *
 * Build: cc -shared -fPIC -O2 -o short_io.so short_io.c -ldl
 * Use:   LD_PRELOAD=$PWD/short_io.so FXR_SHIM_MODE=eintr,short node bin/fixedram.js save ...
 * Calls made through syscall() are not intercepted.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <time.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { kPwritev = 1, kPreadv = 2, kPread = 4, kPwrite = 8 };
enum { kFull, kShort, kOneByte, kEintr, kEagain };

static int g_funcs = -1;
static int g_modes[64];
static int g_nmodes;
static long g_delay_us;
static int g_direct;    /* 0 off, 1 refuse-open, 2 einval-io */
static int g_fallocate; /* 0 off, 1 eopnotsupp */
static long g_lseek_from; /* 0 off; else the first SEEK_DATA/SEEK_HOLE call (1-based) that fails */
static unsigned long g_seeks;
static const char *g_path;
static size_t g_path_len;
static unsigned long g_next, g_calls, g_short, g_eintr, g_eagain, g_directs, g_fallocs, g_dopens;
static int g_delay_noted;

static void Setup(void) {
  const char *f = getenv("FXR_SHIM_FUNCS");
  int funcs = 0;
  if (!f) f = "pwritev,preadv";
  /* whole comma-separated words only */
  char buf[256];
  snprintf(buf, sizeof buf, "%s", f);
  for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
    if (!strcmp(w, "pwritev")) funcs |= kPwritev;
    else if (!strcmp(w, "preadv")) funcs |= kPreadv;
    else if (!strcmp(w, "pread")) funcs |= kPread;
    else if (!strcmp(w, "pwrite")) funcs |= kPwrite;
  }
  const char *m = getenv("FXR_SHIM_MODE");
  g_nmodes = 0;
  if (m) {
    snprintf(buf, sizeof buf, "%s", m);
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w && g_nmodes < 64; w = strtok_r(NULL, ",", &save)) {
      int v = kFull;
      if (!strcmp(w, "short")) v = kShort;
      else if (!strcmp(w, "onebyte")) v = kOneByte;
      else if (!strcmp(w, "eintr")) v = kEintr;
      else if (!strcmp(w, "eagain")) v = kEagain;
      g_modes[g_nmodes++] = v;
    }
  }
  const char *d = getenv("FXR_SHIM_DELAY_US");
  g_delay_us = d ? atol(d) : 0;
  const char *dir = getenv("FXR_SHIM_DIRECT");
  g_direct = !dir ? 0 : !strcmp(dir, "refuse-open") ? 1 : !strcmp(dir, "einval-io") ? 2 : 0;
  g_path = getenv("FXR_SHIM_PATH");
  g_path_len = g_path ? strlen(g_path) : 0;
  const char *fa = getenv("FXR_SHIM_FALLOCATE");
  g_fallocate = fa && !strcmp(fa, "eopnotsupp");
  const char *ls = getenv("FXR_SHIM_LSEEK");
  g_lseek_from = ls && !strncmp(ls, "eio:", 4) ? atol(ls + 4) : 0;
  __atomic_store_n(&g_funcs, funcs, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void Init(void) { Setup(); }

__attribute__((destructor)) static void Report(void) {
  const char *r = getenv("FXR_SHIM_REPORT");
  if (!r) return;
  FILE *f = fopen(r, "a");
  if (!f) return;
  fprintf(f, "calls=%lu short=%lu eintr=%lu eagain=%lu direct=%lu fallocate=%lu dopen=%lu\n", g_calls, g_short, g_eintr,
          g_eagain, g_directs, g_fallocs, g_dopens);
  fclose(f);
}

static void *Real(const char *name) {
  void *p = dlsym(RTLD_NEXT, name);
  if (!p) {
    fprintf(stderr, "short_io: no symbol %s\n", name);
    abort();
  }
  return p;
}

static int IsDirect(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_DIRECT) != 0;
}

/* Whether a path (or /proc/self/fd/N, resolved) is one the shim may disturb. */
static int PathOk(const char *p) {
  if (!g_path_len) return 1;
  char link[4096];
  if (!strncmp(p, "/proc/self/fd/", 14)) {
    ssize_t n = readlink(p, link, sizeof link - 1);
    if (n < 0) return 0;
    link[n] = 0;
    p = link;
  }
  return !strncmp(p, g_path, g_path_len);
}

static int FdOk(int fd) {
  if (!g_path_len) return 1;
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  return PathOk(p);
}

/* What to do with one call of family `fam`: the next behaviour of the cycle, or kFull. */
static int Decide(int fam, int fd, int *err) {
  *err = 0;
  if (!(__atomic_load_n(&g_funcs, __ATOMIC_ACQUIRE) & fam)) return kFull;
  if (!FdOk(fd)) return kFull;
  __atomic_fetch_add(&g_calls, 1, __ATOMIC_RELAXED);
  if (g_delay_us > 0) {
    if (!__atomic_exchange_n(&g_delay_noted, 1, __ATOMIC_RELAXED)) {
      const char *r = getenv("FXR_SHIM_REPORT");
      FILE *f = r ? fopen(r, "a") : NULL;
      if (f) {
        fputs("delayed=1\n", f);
        fclose(f);
      }
    }
    /* the whole delay even when a signal lands on this thread (usleep returns early on EINTR, and
       a SIGINT sent to the process may be taken by the sleeping channel thread) */
    struct timespec left = {g_delay_us / 1000000, (g_delay_us % 1000000) * 1000};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
  }
  if (g_direct == 2 && IsDirect(fd)) {
    __atomic_fetch_add(&g_directs, 1, __ATOMIC_RELAXED);
    *err = EINVAL;
    return kFull;
  }
  if (g_nmodes == 0) return kFull;
  unsigned long i = __atomic_fetch_add(&g_next, 1, __ATOMIC_RELAXED);
  int m = g_modes[i % (unsigned long)g_nmodes];
  if (m == kEintr) {
    __atomic_fetch_add(&g_eintr, 1, __ATOMIC_RELAXED);
    *err = EINTR;
  } else if (m == kEagain) {
    __atomic_fetch_add(&g_eagain, 1, __ATOMIC_RELAXED);
    *err = EAGAIN;
  }
  return m;
}

static size_t Want(int mode, size_t total) {
  if (total <= 1) return total;
  if (mode == kOneByte) return 1;
  if (mode == kShort) return total / 2;
  return total;
}

typedef ssize_t (*VecFn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*ReadFn)(int, void *, size_t, off_t);
typedef ssize_t (*WriteFn)(int, const void *, size_t, off_t);

static ssize_t Vec(const char *name, int fam, int fd, const struct iovec *iov, int n, off_t off) {
  VecFn real = (VecFn)Real(name);
  int err;
  int mode = Decide(fam, fd, &err);
  if (err) {
    errno = err;
    return -1;
  }
  if (mode != kShort && mode != kOneByte) return real(fd, iov, n, off);
  size_t total = 0;
  for (int i = 0; i < n; ++i) total += iov[i].iov_len;
  size_t want = Want(mode, total);
  if (want == total) return real(fd, iov, n, off);
  /* a truncated copy of the iovec list covering exactly `want` bytes */
  struct iovec cut[64];
  int k = 0;
  size_t left = want;
  for (int i = 0; i < n && left > 0 && k < 64; ++i) {
    size_t len = iov[i].iov_len < left ? iov[i].iov_len : left;
    if (len == 0) continue;
    cut[k].iov_base = iov[i].iov_base;
    cut[k].iov_len = len;
    left -= len;
    ++k;
  }
  __atomic_fetch_add(&g_short, 1, __ATOMIC_RELAXED);
  return real(fd, cut, k, off);
}

static ssize_t Read(const char *name, int fd, void *buf, size_t count, off_t off) {
  ReadFn real = (ReadFn)Real(name);
  int err;
  int mode = Decide(kPread, fd, &err);
  if (err) {
    errno = err;
    return -1;
  }
  size_t want = (mode == kShort || mode == kOneByte) ? Want(mode, count) : count;
  if (want != count) __atomic_fetch_add(&g_short, 1, __ATOMIC_RELAXED);
  return real(fd, buf, want, off);
}

static ssize_t Write(const char *name, int fd, const void *buf, size_t count, off_t off) {
  WriteFn real = (WriteFn)Real(name);
  int err;
  int mode = Decide(kPwrite, fd, &err);
  if (err) {
    errno = err;
    return -1;
  }
  size_t want = (mode == kShort || mode == kOneByte) ? Want(mode, count) : count;
  if (want != count) __atomic_fetch_add(&g_short, 1, __ATOMIC_RELAXED);
  return real(fd, buf, want, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) { return Vec("pwritev", kPwritev, fd, iov, n, off); }
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) { return Vec("pwritev64", kPwritev, fd, iov, n, off); }
ssize_t preadv(int fd, const struct iovec *iov, int n, off_t off) { return Vec("preadv", kPreadv, fd, iov, n, off); }
ssize_t preadv64(int fd, const struct iovec *iov, int n, off_t off) { return Vec("preadv64", kPreadv, fd, iov, n, off); }
ssize_t pread(int fd, void *buf, size_t count, off_t off) { return Read("pread", fd, buf, count, off); }
ssize_t pread64(int fd, void *buf, size_t count, off_t off) { return Read("pread64", fd, buf, count, off); }
ssize_t pwrite(int fd, const void *buf, size_t count, off_t off) { return Write("pwrite", fd, buf, count, off); }
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off) { return Write("pwrite64", fd, buf, count, off); }

/* O_DIRECT refused at open time */
typedef int (*OpenFn)(const char *, int, ...);
typedef int (*OpenatFn)(int, const char *, int, ...);

static int RefuseDirect(const char *p, int flags) {
  if (g_direct == 1 && (flags & O_DIRECT) && PathOk(p)) {
    __atomic_fetch_add(&g_directs, 1, __ATOMIC_RELAXED);
    errno = EINVAL;
    return 1;
  }
  return 0;
}

#define OPEN_MODE(flags, mode)                                           \
  mode_t mode = 0;                                                       \
  if ((flags) & (O_CREAT | O_TMPFILE)) {                                 \
    va_list ap;                                                          \
    va_start(ap, flags);                                                 \
    mode = va_arg(ap, mode_t);                                           \
    va_end(ap);                                                          \
  }

/* counts a successful open with O_DIRECT of a file the shim watches */
static int NoteDirect(int fd, const char *p, int flags) {
  if (fd >= 0 && (flags & O_DIRECT) && PathOk(p)) __atomic_fetch_add(&g_dopens, 1, __ATOMIC_RELAXED);
  return fd;
}

int open(const char *p, int flags, ...) {
  OPEN_MODE(flags, mode);
  if (RefuseDirect(p, flags)) return -1;
  return NoteDirect(((OpenFn)Real("open"))(p, flags, mode), p, flags);
}
int open64(const char *p, int flags, ...) {
  OPEN_MODE(flags, mode);
  if (RefuseDirect(p, flags)) return -1;
  return NoteDirect(((OpenFn)Real("open64"))(p, flags, mode), p, flags);
}
int openat(int dfd, const char *p, int flags, ...) {
  OPEN_MODE(flags, mode);
  if (RefuseDirect(p, flags)) return -1;
  return NoteDirect(((OpenatFn)Real("openat"))(dfd, p, flags, mode), p, flags);
}
int openat64(int dfd, const char *p, int flags, ...) {
  OPEN_MODE(flags, mode);
  if (RefuseDirect(p, flags)) return -1;
  return NoteDirect(((OpenatFn)Real("openat64"))(dfd, p, flags, mode), p, flags);
}

/* no hole punching */
typedef int (*FallocFn)(int, int, off_t, off_t);
int fallocate(int fd, int mode, off_t off, off_t len) {
  if (g_fallocate && FdOk(fd)) {
    __atomic_fetch_add(&g_fallocs, 1, __ATOMIC_RELAXED);
    errno = EOPNOTSUPP;
    return -1;
  }
  return ((FallocFn)Real("fallocate"))(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) {
  if (g_fallocate && FdOk(fd)) {
    __atomic_fetch_add(&g_fallocs, 1, __ATOMIC_RELAXED);
    errno = EOPNOTSUPP;
    return -1;
  }
  return ((FallocFn)Real("fallocate64"))(fd, mode, off, len);
}

/* an extent walk that fails half-way */
typedef off_t (*LseekFn)(int, off_t, int);
static int SeekFails(int fd, int whence) {
  if (g_lseek_from <= 0 || (whence != SEEK_DATA && whence != SEEK_HOLE) || !FdOk(fd)) return 0;
  return (long)__atomic_add_fetch(&g_seeks, 1, __ATOMIC_RELAXED) >= g_lseek_from;
}
off_t lseek(int fd, off_t off, int whence) {
  if (SeekFails(fd, whence)) {
    errno = EIO;
    return -1;
  }
  return ((LseekFn)Real("lseek"))(fd, off, whence);
}
off_t lseek64(int fd, off_t off, int whence) {
  if (SeekFails(fd, whence)) {
    errno = EIO;
    return -1;
  }
  return ((LseekFn)Real("lseek64"))(fd, off, whence);
}
