// SPDX-License-Identifier: MIT
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
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

}  // namespace fixedram
