// SPDX-License-Identifier: MIT
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

namespace fixedram {

namespace {

// Advances an iovec cursor by n bytes (after a partial transfer).
void Advance(std::vector<struct iovec>* v, size_t* first, size_t n) {
  while (n > 0 && *first < v->size()) {
    struct iovec& e = (*v)[*first];
    if (n >= e.iov_len) {
      n -= e.iov_len;
      e.iov_len = 0;
      ++*first;
    } else {
      e.iov_base = static_cast<char*>(e.iov_base) + n;
      e.iov_len -= n;
      n = 0;
    }
  }
  while (*first < v->size() && (*v)[*first].iov_len == 0) ++*first;
}

uint64_t TransferV(bool write, int fd, const struct iovec* iov, size_t count, int64_t offset) {
  std::vector<struct iovec> v(iov, iov + count);
  size_t first = 0;
  while (first < v.size() && v[first].iov_len == 0) ++first;
  uint64_t done = 0;
  while (first < v.size()) {
    int n = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    ssize_t r = write ? pwritev(fd, &v[first], n, offset) : preadv(fd, &v[first], n, offset);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw SysError{errno, write ? "pwritev" : "preadv", offset};
    }
    if (r == 0) {
      // A zero-length write cannot make progress; a zero-length read is end of file.
      throw SysError{write ? EIO : 0, write ? "pwritev" : "preadv", offset};
    }
    done += static_cast<uint64_t>(r);
    offset += r;
    Advance(&v, &first, static_cast<size_t>(r));
  }
  return done;
}

}  // namespace

void PreadFull(int fd, void* buf, size_t len, int64_t offset) {
  struct iovec one = {buf, len};
  TransferV(false, fd, &one, 1, offset);
}

uint64_t PwritevFull(int fd, const struct iovec* iov, size_t count, int64_t offset) {
  return TransferV(true, fd, iov, count, offset);
}

uint64_t PreadvFull(int fd, const struct iovec* iov, size_t count, int64_t offset) {
  return TransferV(false, fd, iov, count, offset);
}

bool PunchHole(int fd, int64_t offset, int64_t len) {
  if (len <= 0) return true;
  for (;;) {
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len) == 0) return true;
    if (errno == EINTR) continue;
    if (errno == EOPNOTSUPP || errno == ENOSYS) return false;
    throw SysError{errno, "fallocate", offset};
  }
}

void WriteZeros(int fd, int64_t offset, int64_t len) {
  static const size_t kChunk = 1 << 20;
  static const std::vector<unsigned char> zeros(kChunk, 0);
  std::vector<struct iovec> iov;
  int64_t left = len;
  while (left > 0) {
    size_t n = static_cast<size_t>(std::min<int64_t>(left, kChunk));
    iov.push_back({const_cast<unsigned char*>(zeros.data()), n});
    left -= static_cast<int64_t>(n);
  }
  PwritevFull(fd, iov.data(), iov.size(), offset);
}

bool DataExtents(int fd, int64_t lo, int64_t hi, std::vector<std::pair<int64_t, int64_t>>* out) {
  return DataExtentsUpTo(fd, lo, hi, INT64_MAX, out);
}

bool DataExtentsUpTo(int fd, int64_t lo, int64_t hi, int64_t max, std::vector<std::pair<int64_t, int64_t>>* out) {
  int64_t pos = lo;
  int64_t found = 0;
  while (pos < hi && found < max) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) return true;  // no data at or after pos
      if (errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS) return false;
      throw SysError{errno, "lseek", pos};
    }
    if (d >= hi) return true;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) {
      if (errno == ENXIO) h = hi;  // the file shrank under us; the caller's size checks report it
      else throw SysError{errno, "lseek", d};
    }
    int64_t end = std::min<int64_t>(h, hi);
    if (end <= d) return true;
    out->push_back({d, end});
    ++found;
    pos = end;
  }
  return true;
}

bool IsZero(const unsigned char* p, size_t len) {
  // Word-wise OR over 64-byte chunks with an early exit: a data page almost always fails in its
  // first chunk, so only zero pages are scanned in full.
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  size_t words = len / 8;
  for (size_t i = 0; i < words; i += 8) {
    uint64_t acc = w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
    if (acc != 0) return false;
  }
  return true;
}

void StartWriteback(int fd, int64_t offset, int64_t len) {
  if (len <= 0) return;
  // Best effort: not every file system supports it, and failure here changes nothing but timing.
  (void)sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE);
}

namespace {

// Closes a descriptor on scope exit (intermediate directories of OpenBeneath).
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) close(fd);
  }
};

int OpenatRetry(int dirfd, const char* name, int flags, int mode) {
  for (;;) {
    int fd = openat(dirfd, name, flags, mode);
    if (fd >= 0 || errno != EINTR) return fd;
  }
}

}  // namespace

int OpenBeneath(int dirfd, const std::string& rel, int flags, int mode, int mkdir_mode) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    std::string part = rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") throw SysError{EINVAL, "openat", static_cast<int64_t>(parts.size())};
    parts.push_back(part);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
#ifdef SYS_openat2
  if (mkdir_mode < 0) {
    // The kernel resolves the whole path: no component may be a symlink, none may leave dirfd.
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = static_cast<uint64_t>(flags | O_NOFOLLOW | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? static_cast<uint64_t>(mode) : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (;;) {
      long fd = syscall(SYS_openat2, dirfd, rel.c_str(), &how, sizeof how);
      if (fd >= 0) return static_cast<int>(fd);
      if (errno == EINTR || errno == EAGAIN) continue;  // EAGAIN: a concurrent rename; retry
      if (errno == ENOSYS || errno == EPERM) break;     // old kernel, or a seccomp filter: walk ourselves
      throw SysError{errno, "openat2", static_cast<int64_t>(parts.size() - 1)};
    }
  }
#endif
  // One component at a time, each relative to the descriptor of its parent, never following a link.
  FdGuard cur{-1};
  int at = dirfd;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    bool made = false;
    if (mkdir_mode >= 0) {
      if (mkdirat(at, parts[i].c_str(), static_cast<mode_t>(mkdir_mode)) == 0) made = true;
      else if (errno != EEXIST) throw SysError{errno, "mkdirat", static_cast<int64_t>(i)};
    }
    int fd = OpenatRetry(at, parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) throw SysError{errno, "openat", static_cast<int64_t>(i)};
    FdGuard next{fd};
    if (made && fchmod(fd, static_cast<mode_t>(mkdir_mode)) != 0) throw SysError{errno, "fchmod", static_cast<int64_t>(i)};
    std::swap(cur.fd, next.fd);
    at = cur.fd;
  }
  int fd = OpenatRetry(at, parts.back().c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) throw SysError{errno, "openat", static_cast<int64_t>(parts.size() - 1)};
  return fd;
}

void UnlinkBeneath(int dirfd, const std::string& rel) {
  size_t slash = rel.rfind('/');
  FdGuard parent{-1};
  if (slash != std::string::npos) parent.fd = OpenBeneath(dirfd, rel.substr(0, slash), O_RDONLY | O_DIRECTORY, 0, -1);
  std::string last = slash == std::string::npos ? rel : rel.substr(slash + 1);
  if (last.empty() || last == "." || last == "..") throw SysError{EINVAL, "unlinkat", 0};
  if (unlinkat(parent.fd >= 0 ? parent.fd : dirfd, last.c_str(), 0) != 0) throw SysError{errno, "unlinkat", 0};
}

}  // namespace fixedram
