// SPDX-License-Identifier: MIT
#include "pages.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "sys.h"
#include "hash.h"

namespace fixedram {

namespace {

// File offset of page `page` of a block: base + page * page_size, refusing overflow and anything
// past the largest offset a 64-bit off_t (and a JS safe integer) can name.
int64_t PageOffset(const BlockFile& f, int64_t page) {
  int64_t rel = 0;
  int64_t abs = 0;
  if (page < 0 || __builtin_mul_overflow(page, f.page_size, &rel) || __builtin_add_overflow(f.base, rel, &abs) ||
      abs > (int64_t{1} << 53)) {
    throw SysError{EOVERFLOW, "offset", f.base, f.role};
  }
  return abs;
}

// Runs fn, tagging any SysError with the role of the file it concerns.
template <typename Fn>
auto On(const BlockFile& f, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (SysError& e) {
    e.file = f.role;
    throw;
  }
}

uint64_t LoadLe64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void StoreLe64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

// Calls fn(begin, end) for every maximal run [begin, end) of indexes whose mark equals want.
template <typename Fn>
void ForRuns(const std::vector<uint8_t>& marks, uint8_t want, Fn fn) {
  const int64_t n = static_cast<int64_t>(marks.size());
  for (int64_t i = 0; i < n;) {
    if (marks[i] != want) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < n && marks[j] == want) ++j;
    fn(i, j);
    i = j;
  }
}

// Builds the iovec list of a run of pages held in scratch, merging pages that are adjacent in
// memory into one entry (in scratch they always are; the split at IOV_MAX is PwritevFull's).
void RunIovecs(unsigned char* scratch, int64_t page_size, int64_t begin, int64_t end,
               std::vector<struct iovec>* iov) {
  iov->clear();
  for (int64_t i = begin; i < end; ++i) {
    unsigned char* p = scratch + i * page_size;
    if (!iov->empty()) {
      struct iovec& last = iov->back();
      if (static_cast<unsigned char*>(last.iov_base) + last.iov_len == p) {
        last.iov_len += static_cast<size_t>(page_size);
        continue;
      }
    }
    iov->push_back({p, static_cast<size_t>(page_size)});
  }
}

// Reads the pages of [begin, end) of a block into their slots in scratch.
int64_t ReadRun(const BlockFile& f, const PageBatch& b, int64_t begin, int64_t end) {
  const int64_t len = (end - begin) * f.page_size;
  On(f, [&] { PreadFull(f.fd, b.scratch + begin * f.page_size, static_cast<size_t>(len), PageOffset(f, b.first + begin)); });
  return len;
}

// Marks the pages of the batch that overlap a data extent of the file. Returns false when the file
// system gives no hole information.
bool MarkData(const BlockFile& f, const PageBatch& b, std::vector<uint8_t>* marks) {
  const int64_t lo = PageOffset(f, b.first);
  const int64_t hi = PageOffset(f, b.first + b.count);
  std::vector<std::pair<int64_t, int64_t>> ext;
  if (!On(f, [&] { return DataExtents(f.fd, lo, hi, &ext); })) return false;
  marks->assign(static_cast<size_t>(b.count), 0);
  for (const auto& e : ext) {
    int64_t p0 = (e.first - lo) / f.page_size;
    int64_t p1 = (e.second - lo + f.page_size - 1) / f.page_size;
    for (int64_t p = p0; p < p1 && p < b.count; ++p) (*marks)[p] = 1;
  }
  return true;
}

// A shared mapping, unmapped when it goes out of scope, however the scope ends (every mmap in this
// file is held by one).
struct Mapping {
  unsigned char* base = nullptr;
  size_t len = 0;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping() = default;
  ~Mapping() {
    if (base != nullptr) munmap(base, len);
  }
};

// Maps [off, off + len) of a target read-write and shared (hugetlbfs: pwrite fails with EINVAL, so
// pages are copied through a mapping whose memory is the target's).
void MapWritable(const BlockFile& f, int64_t off, int64_t len, Mapping* m) {
  void* p = mmap(nullptr, static_cast<size_t>(len), PROT_READ | PROT_WRITE, MAP_SHARED, f.fd, off);
  if (p == MAP_FAILED) throw SysError{errno, "mmap", off, f.role};
  m->base = static_cast<unsigned char*>(p);
  m->len = static_cast<size_t>(len);
}

}  // namespace

bool MarkDataPages(const BlockFile& f, int64_t first, int64_t count, unsigned char* mask, int32_t* ready) {
  // mask[first, first + done) is final: a later extent can only mark pages from `done` on
  auto publish = [&](int64_t done) {
    if (ready != nullptr) __atomic_store_n(ready, static_cast<int32_t>(done), __ATOMIC_RELEASE);
  };
  const int64_t lo = PageOffset(f, first);
  const int64_t hi = PageOffset(f, first + count);
  std::vector<std::pair<int64_t, int64_t>> ext;
  for (int64_t pos = lo; pos < hi;) {
    ext.clear();
    if (!On(f, [&] { return DataExtentsUpTo(f.fd, pos, hi, 1, &ext); })) {
      memset(mask + first, 1, static_cast<size_t>(count));
      publish(count);
      return false;
    }
    if (ext.empty()) break;
    const int64_t p0 = (ext[0].first - lo) / f.page_size;
    const int64_t p1 = std::min(count, (ext[0].second - lo + f.page_size - 1) / f.page_size);
    if (p1 > p0) memset(mask + first + p0, 1, static_cast<size_t>(p1 - p0));
    publish(p1);
    pos = ext[0].second;
  }
  publish(count);
  return true;
}

SaveResult SavePages(const BlockFile& src, const BlockFile& dst, const PageBatch& b, uint32_t flags) {
  if (InPieces(b, src.page_size)) return SaveHugePage(src, dst, b, flags);
  SaveResult r;
  const int64_t ps = src.page_size;
  const int64_t n = b.count;
  const bool update = (flags & kSaveUpdate) != 0;
  const bool rewrite = (flags & kSaveRewrite) != 0;

  // find: which source pages may hold data
  std::vector<uint8_t> cand(static_cast<size_t>(n), 1);
  if ((flags & kSaveMask) && b.mask != nullptr) {
    for (int64_t i = 0; i < n; ++i) cand[i] = b.mask[b.first + i] ? 1 : 0;
  }
  if (flags & kSaveSeekData) {
    std::vector<uint8_t> data;
    if (MarkData(src, b, &data)) {
      for (int64_t i = 0; i < n; ++i) cand[i] &= data[i];
    }
  }

  // read, then classify: zero scan and hash
  ForRuns(cand, 1, [&](int64_t i, int64_t j) { r.bytes_read += ReadRun(src, b, i, j); });
  std::vector<uint8_t> now(static_cast<size_t>(n), 0);
  std::vector<uint64_t> hash(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    if (!cand[i]) continue;
    const unsigned char* page = b.scratch + i * ps;
    if (IsZero(page, static_cast<size_t>(ps))) continue;
    now[i] = 1;
    hash[i] = Xxh3Hash(page, static_cast<size_t>(ps));
  }

  // decide: 1 = write, 2 = punch, 0 = nothing
  std::vector<uint8_t> act(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = b.first + i;
    if (!update) {
      act[i] = now[i];
      continue;
    }
    const bool was = b.present[p] != 0;
    if (now[i]) {
      act[i] = (rewrite || !was || LoadLe64(b.csums + 8 * p) != hash[i]) ? 1 : 0;
    } else {
      act[i] = (rewrite || was) ? 2 : 0;
    }
    if (act[i] == 0) ++r.unchanged_pages;
  }

  // write runs of present pages, punch runs of pages that became zero
  std::vector<struct iovec> iov;
  ForRuns(act, 1, [&](int64_t i, int64_t j) {
    RunIovecs(b.scratch, ps, i, j, &iov);
    r.bytes_written += On(dst, [&] {
      return static_cast<int64_t>(PwritevFull(dst.fd, iov.data(), iov.size(), PageOffset(dst, b.first + i)));
    });
    r.written_pages += j - i;
  });
  ForRuns(act, 2, [&](int64_t i, int64_t j) {
    On(dst, [&] {
      const int64_t off = PageOffset(dst, b.first + i);
      if (!PunchHole(dst.fd, off, (j - i) * ps)) WriteZeros(dst.fd, off, (j - i) * ps);
    });
    r.punched_pages += j - i;
  });
  if ((flags & kSaveWriteback) && r.written_pages > 0) {
    StartWriteback(dst.fd, On(dst, [&] { return PageOffset(dst, b.first); }), n * ps);
  }

  // store the batch's bitmap bytes and checksums
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = b.first + i;
    b.present[p] = now[i];
    StoreLe64(b.csums + 8 * p, hash[i]);
    r.present_pages += now[i];
  }
  return r;
}

LoadResult LoadPages(const BlockFile& snap, const BlockFile& dst, const PageBatch& b, uint32_t flags) {
  if (InPieces(b, snap.page_size)) return LoadHugePage(snap, dst, b, flags);
  LoadResult r;
  const int64_t ps = snap.page_size;
  const int64_t n = b.count;
  std::vector<uint8_t> marks(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) marks[i] = b.present[b.first + i] ? 1 : 0;
  if (flags & kLoadWillNeed) {
    int64_t lo = 0;
    int64_t hi = n;
    while (lo < n && !marks[lo]) ++lo;
    while (hi > lo && !marks[hi - 1]) --hi;
    // advice only: a failure changes nothing but the speed
    if (lo < hi) posix_fadvise(snap.fd, PageOffset(snap, b.first + lo), (hi - lo) * ps, POSIX_FADV_WILLNEED);
  }

  // read and check everything before the first byte of the batch is written
  ForRuns(marks, 1, [&](int64_t i, int64_t j) { r.bytes_read += ReadRun(snap, b, i, j); });
  if (flags & kLoadVerify) {
    for (int64_t i = 0; i < n; ++i) {
      if (!marks[i]) continue;
      const uint64_t h = Xxh3Hash(b.scratch + i * ps, static_cast<size_t>(ps));
      if (h != LoadLe64(b.csums + 8 * (b.first + i))) {
        r.bad_page = b.first + i;
        r.bad_actual = h;
        return r;
      }
    }
  }

  const bool zero = (flags & kLoadZeroAbsent) != 0;
  if (flags & kLoadMmapTarget) {
    // hugetlbfs: copy through a shared mapping of exactly the batch (unmapped on every way out,
    // also when a punch below throws)
    const int64_t off = PageOffset(dst, b.first);
    Mapping m;
    MapWritable(dst, off, n * ps, &m);
    unsigned char* base = m.base;
    ForRuns(marks, 1, [&](int64_t i, int64_t j) {
      memcpy(base + i * ps, b.scratch + i * ps, static_cast<size_t>((j - i) * ps));
      r.bytes_written += (j - i) * ps;
    });
    if (zero) {
      ForRuns(marks, 0, [&](int64_t i, int64_t j) {
        if (!On(dst, [&] { return PunchHole(dst.fd, off + i * ps, (j - i) * ps); })) memset(base + i * ps, 0, static_cast<size_t>((j - i) * ps));
        r.zeroed_pages += j - i;
      });
    }
    return r;
  }

  std::vector<struct iovec> iov;
  ForRuns(marks, 1, [&](int64_t i, int64_t j) {
    RunIovecs(b.scratch, ps, i, j, &iov);
    r.bytes_written += On(dst, [&] {
      return static_cast<int64_t>(PwritevFull(dst.fd, iov.data(), iov.size(), PageOffset(dst, b.first + i)));
    });
  });
  if (zero) {
    ForRuns(marks, 0, [&](int64_t i, int64_t j) {
      On(dst, [&] {
        const int64_t off = PageOffset(dst, b.first + i);
        if (!PunchHole(dst.fd, off, (j - i) * ps)) WriteZeros(dst.fd, off, (j - i) * ps);
      });
      r.zeroed_pages += j - i;
    });
  }
  return r;
}

VerifyResult VerifyPages(const BlockFile& snap, const BlockFile& against, const PageBatch& b,
                         unsigned char* scratch2, uint64_t* bad, int64_t capacity, uint32_t flags) {
  if (InPieces(b, snap.page_size)) return VerifyHugePage(snap, against, b, scratch2, bad, capacity, flags);
  VerifyResult r;
  const int64_t ps = snap.page_size;
  const int64_t n = b.count;
  // Failures are gathered, then reported in page order, so a capped report lists the first pages.
  struct Bad {
    int64_t page;
    uint64_t kind;
    uint64_t actual;
  };
  std::vector<Bad> found;
  auto report = [&](int64_t i, uint64_t kind, uint64_t actual) { found.push_back({b.first + i, kind, actual}); };
  std::vector<uint8_t> marks(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) marks[i] = b.present[b.first + i] ? 1 : 0;

  // present pages: checksum
  ForRuns(marks, 1, [&](int64_t i, int64_t j) { r.bytes_read += ReadRun(snap, b, i, j); });
  for (int64_t i = 0; i < n && (flags & kVerifyChecksums); ++i) {
    if (!marks[i]) continue;
    const uint64_t h = Xxh3Hash(b.scratch + i * ps, static_cast<size_t>(ps));
    if (h != LoadLe64(b.csums + 8 * (b.first + i))) report(i, kBadChecksum, h);
  }

  // absent pages: their slots must be holes or zeros. Only slots with data are read.
  std::vector<uint8_t> data;
  const bool absent_zero = (flags & kVerifyAbsentZero) != 0;
  bool known = false;
  if (absent_zero && (flags & kVerifyDataMask) && b.mask != nullptr) {
    data.assign(b.mask + b.first, b.mask + b.first + n);
    known = true;
  } else if (absent_zero) {
    known = MarkData(snap, b, &data);
  }
  std::vector<uint8_t> check(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    if (marks[i]) continue;
    memset(b.scratch + i * ps, 0, static_cast<size_t>(ps));
    check[i] = !absent_zero ? 0 : known ? data[i] : 1;
  }
  ForRuns(check, 1, [&](int64_t i, int64_t j) { r.bytes_read += ReadRun(snap, b, i, j); });
  for (int64_t i = 0; i < n; ++i) {
    if (!check[i]) continue;
    unsigned char* page = b.scratch + i * ps;
    if (!IsZero(page, static_cast<size_t>(ps))) {
      report(i, kAbsentNotZero, Xxh3Hash(page, static_cast<size_t>(ps)));
      memset(page, 0, static_cast<size_t>(ps));  // the snapshot's content of an absent page is zero
    }
  }

  // live comparison: absent page <=> zero page
  if (against.fd >= 0) {
    const int64_t len = n * ps;
    On(against, [&] { PreadFull(against.fd, scratch2, static_cast<size_t>(len), PageOffset(against, b.first)); });
    r.bytes_read += len;
    for (int64_t i = 0; i < n; ++i) {
      if (memcmp(b.scratch + i * ps, scratch2 + i * ps, static_cast<size_t>(ps)) != 0) {
        report(i, kDiffersFromLive, Xxh3Hash(scratch2 + i * ps, static_cast<size_t>(ps)));
      }
    }
  }
  std::stable_sort(found.begin(), found.end(), [](const Bad& x, const Bad& y) { return x.page < y.page; });
  for (const Bad& f : found) {
    if (r.bad_count < capacity) {
      bad[3 * r.bad_count] = static_cast<uint64_t>(f.page);
      bad[3 * r.bad_count + 1] = f.kind;
      bad[3 * r.bad_count + 2] = f.actual;
    }
    ++r.bad_count;
  }
  return r;
}

// ---- streamed hashing and huge pages in pieces ----------------------------------------------------

namespace {

// kPieceBytes of zeros, shared read-only by every thread.
const unsigned char* Zeros() {
  static const std::vector<unsigned char> zeros(static_cast<size_t>(kPieceBytes), 0);
  return zeros.data();
}

struct Xxh3 {
  XXH3_state_t* s;
  Xxh3() : s(XXH3_createState()) {
    if (s == nullptr) throw SysError{ENOMEM, "malloc", 0};
    XXH3_64bits_reset(s);
  }
  ~Xxh3() { XXH3_freeState(s); }
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void Reset() { XXH3_64bits_reset(s); }
  void Add(const void* p, size_t n) { Xxh3Update(s, p, n); }
  void AddZeros(int64_t n) {
    while (n > 0) {
      const int64_t k = std::min(n, kPieceBytes);
      Add(Zeros(), static_cast<size_t>(k));
      n -= k;
    }
  }
  uint64_t Digest() const { return XXH3_64bits_digest(s); }
};

uint64_t PopCount(const unsigned char* p, size_t n) {
  uint64_t c = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    c += static_cast<uint64_t>(__builtin_popcountll(w));
  }
  for (; i < n; ++i) c += static_cast<uint64_t>(__builtin_popcount(p[i]));
  return c;
}

// One flag per piece of page `page`: whether the piece overlaps a data extent of the file (all set
// when the file system gives no hole information).
std::vector<uint8_t> PieceData(const BlockFile& f, int64_t page) {
  const int64_t ps = f.page_size;
  const int64_t n = (ps + kPieceBytes - 1) / kPieceBytes;
  const int64_t off = PageOffset(f, page);
  std::vector<uint8_t> d(static_cast<size_t>(n), 0);
  std::vector<std::pair<int64_t, int64_t>> ext;
  if (!On(f, [&] { return DataExtents(f.fd, off, off + ps, &ext); })) {
    d.assign(static_cast<size_t>(n), 1);
    return d;
  }
  for (const auto& e : ext) {
    for (int64_t k = (e.first - off) / kPieceBytes; k < n && k * kPieceBytes < e.second - off; ++k) d[k] = 1;
  }
  return d;
}

int64_t PieceLen(int64_t ps, int64_t k) { return std::min(kPieceBytes, ps - k * kPieceBytes); }

// Piece k (len bytes) of the page at file offset off, into the hash h: read into scratch when it
// holds data (`data`), else hashed as zeros without a read. Returns the bytes read (0: no read).
int64_t HashPiece(const BlockFile& f, int64_t off, int64_t k, int64_t len, bool data, unsigned char* scratch,
                  Xxh3* h) {
  if (!data) {
    h->AddZeros(len);
    return 0;
  }
  On(f, [&] { PreadFull(f.fd, scratch, static_cast<size_t>(len), off + k * kPieceBytes); });
  h->Add(scratch, static_cast<size_t>(len));
  return len;
}

void ZeroRange(const BlockFile& f, int64_t off, int64_t len) {
  On(f, [&] {
    if (!PunchHole(f.fd, off, len)) WriteZeros(f.fd, off, len);
  });
}

}  // namespace

uint64_t HashRanges(int fd, const std::vector<std::pair<int64_t, int64_t>>& ranges, uint64_t* popcount) {
  Xxh3 h;
  std::vector<unsigned char> buf(static_cast<size_t>(std::min<int64_t>(kPieceBytes, int64_t{1} << 20)));
  const int64_t chunk = static_cast<int64_t>(buf.size());
  *popcount = 0;
  bool holes = true;
  for (size_t r = 0; r < ranges.size(); ++r) {
    int64_t pos = ranges[r].first;
    const int64_t hi = ranges[r].first + ranges[r].second;
    while (pos < hi) {
      int64_t d = pos;
      int64_t e = hi;
      if (holes) {
        std::vector<std::pair<int64_t, int64_t>> ext;
        if (!DataExtentsUpTo(fd, pos, hi, 1, &ext)) {
          holes = false;
        } else if (ext.empty()) {
          d = e = hi;
        } else {
          d = ext[0].first;
          e = ext[0].second;
        }
      }
      h.AddZeros(d - pos);
      for (int64_t at = d; at < e; at += chunk) {
        const int64_t n = std::min(chunk, e - at);
        PreadFull(fd, buf.data(), static_cast<size_t>(n), at);
        h.Add(buf.data(), static_cast<size_t>(n));
        if (r == 0) *popcount += PopCount(buf.data(), static_cast<size_t>(n));
      }
      pos = e;
    }
  }
  return h.Digest();
}

SaveResult SaveHugePage(const BlockFile& src, const BlockFile& dst, const PageBatch& b, uint32_t flags) {
  SaveResult r;
  const int64_t ps = src.page_size;
  const int64_t p = b.first;
  const int64_t pieces = (ps + kPieceBytes - 1) / kPieceBytes;
  const bool update = (flags & kSaveUpdate) != 0;
  const bool rewrite = (flags & kSaveRewrite) != 0;
  const bool cand = !((flags & kSaveMask) && b.mask != nullptr && !b.mask[p]);
  const std::vector<uint8_t> data = cand ? PieceData(src, p) : std::vector<uint8_t>(static_cast<size_t>(pieces), 0);
  const int64_t src_off = cand ? PageOffset(src, p) : 0;
  const int64_t dst_off = On(dst, [&] { return PageOffset(dst, p); });
  Xxh3 h;
  // One pass over the page: hash it and, when `write`, write its non-zero pieces (and in an update
  // make its zero pieces zero). Returns whether any byte was non-zero.
  auto pass = [&](bool write) {
    h.Reset();
    bool nonzero = false;
    for (int64_t k = 0; k < pieces; ++k) {
      const int64_t len = PieceLen(ps, k);
      const int64_t got = HashPiece(src, src_off, k, len, data[k] != 0, b.scratch, &h);
      r.bytes_read += got;
      const bool zero = got == 0 || IsZero(b.scratch, static_cast<size_t>(len));
      nonzero = nonzero || !zero;
      if (!write) continue;
      if (!zero) {
        struct iovec v = {b.scratch, static_cast<size_t>(len)};
        r.bytes_written += On(dst, [&] { return static_cast<int64_t>(PwritevFull(dst.fd, &v, 1, dst_off + k * kPieceBytes)); });
      } else if (update) {
        ZeroRange(dst, dst_off + k * kPieceBytes, len);
      }
    }
    return nonzero;
  };
  bool now = false;
  uint64_t hash = 0;
  if (!update) {
    now = pass(true);  // a fresh slot is a hole: zero pieces need no write
    if (now) ++r.written_pages;
  } else {
    const bool was = b.present[p] != 0;
    now = pass(false);
    hash = h.Digest();
    if (now && (rewrite || !was || LoadLe64(b.csums + 8 * p) != hash)) {
      now = pass(true);  // the bytes written are the bytes hashed by this second pass
      if (now) ++r.written_pages; else ++r.punched_pages;
    } else if (!now && (rewrite || was)) {
      ZeroRange(dst, dst_off, ps);
      ++r.punched_pages;
    } else {
      ++r.unchanged_pages;
    }
  }
  hash = now ? h.Digest() : 0;
  if ((flags & kSaveWriteback) && r.written_pages > 0) StartWriteback(dst.fd, dst_off, ps);
  b.present[p] = now ? 1 : 0;
  StoreLe64(b.csums + 8 * p, hash);
  r.present_pages = now ? 1 : 0;
  return r;
}

LoadResult LoadHugePage(const BlockFile& snap, const BlockFile& dst, const PageBatch& b, uint32_t flags) {
  LoadResult r;
  const int64_t ps = snap.page_size;
  const int64_t p = b.first;
  const int64_t pieces = (ps + kPieceBytes - 1) / kPieceBytes;
  const bool zero_absent = (flags & kLoadZeroAbsent) != 0;
  const bool mmap_target = (flags & kLoadMmapTarget) != 0;
  const int64_t dst_off = On(dst, [&] { return PageOffset(dst, p); });
  const bool present = b.present[p] != 0;
  if (!present && !zero_absent) return r;
  Mapping target;  // hugetlbfs: a mapping of the one (huge) page
  if (mmap_target) MapWritable(dst, dst_off, ps, &target);
  unsigned char* map = target.base;
  auto zero_piece = [&](int64_t at, int64_t len) {
    if (map != nullptr) {
      if (!On(dst, [&] { return PunchHole(dst.fd, dst_off + at, len); })) memset(map + at, 0, static_cast<size_t>(len));
    } else {
      ZeroRange(dst, dst_off + at, len);
    }
  };
  if (!present) {
    zero_piece(0, ps);
    r.zeroed_pages = 1;
    return r;
  }
  const std::vector<uint8_t> data = PieceData(snap, p);
  const int64_t snap_off = PageOffset(snap, p);
  auto read_piece = [&](int64_t k, int64_t len) {
    On(snap, [&] { PreadFull(snap.fd, b.scratch, static_cast<size_t>(len), snap_off + k * kPieceBytes); });
    r.bytes_read += len;
  };
  if (flags & kLoadVerify) {
    // check the whole page before any byte of it is written
    Xxh3 h;
    for (int64_t k = 0; k < pieces; ++k) {
      r.bytes_read += HashPiece(snap, snap_off, k, PieceLen(ps, k), data[k] != 0, b.scratch, &h);
    }
    const uint64_t got = h.Digest();
    if (got != LoadLe64(b.csums + 8 * p)) {
      r.bad_page = p;
      r.bad_actual = got;
      return r;
    }
  }
  for (int64_t k = 0; k < pieces; ++k) {
    const int64_t len = PieceLen(ps, k);
    const int64_t at = k * kPieceBytes;
    if (!data[k]) {
      if (zero_absent) zero_piece(at, len);
      continue;
    }
    read_piece(k, len);
    if (map != nullptr) {
      memcpy(map + at, b.scratch, static_cast<size_t>(len));
    } else {
      struct iovec v = {b.scratch, static_cast<size_t>(len)};
      On(dst, [&] { PwritevFull(dst.fd, &v, 1, dst_off + at); });
    }
    r.bytes_written += len;
  }
  return r;
}

VerifyResult VerifyHugePage(const BlockFile& snap, const BlockFile& against, const PageBatch& b,
                            unsigned char* scratch2, uint64_t* bad, int64_t capacity, uint32_t flags) {
  VerifyResult r;
  const int64_t ps = snap.page_size;
  const int64_t p = b.first;
  const int64_t pieces = (ps + kPieceBytes - 1) / kPieceBytes;
  const bool present = b.present[p] != 0;
  const bool absent_zero = (flags & kVerifyAbsentZero) != 0;
  const bool live = against.fd >= 0;
  if (!present && !absent_zero && !live) return r;
  std::vector<uint8_t> data;
  if ((flags & kVerifyDataMask) && b.mask != nullptr && !b.mask[p]) {
    data.assign(static_cast<size_t>(pieces), 0);
  } else {
    data = PieceData(snap, p);
  }
  if (!present && !live && std::none_of(data.begin(), data.end(), [](uint8_t v) { return v != 0; })) return r;
  const int64_t snap_off = PageOffset(snap, p);
  const int64_t live_off = live ? On(against, [&] { return PageOffset(against, p); }) : 0;
  Xxh3 h;
  Xxh3 lh;
  bool nonzero = false;
  bool differs = false;
  for (int64_t k = 0; k < pieces; ++k) {
    const int64_t len = PieceLen(ps, k);
    const unsigned char* content = Zeros();
    const int64_t got = HashPiece(snap, snap_off, k, len, data[k] != 0, b.scratch, &h);
    r.bytes_read += got;
    if (got != 0) {
      if (present) content = b.scratch;
      else if (!IsZero(b.scratch, static_cast<size_t>(len))) nonzero = true;
    }
    if (live) {
      On(against, [&] { PreadFull(against.fd, scratch2, static_cast<size_t>(len), live_off + k * kPieceBytes); });
      r.bytes_read += len;
      lh.Add(scratch2, static_cast<size_t>(len));
      if (memcmp(content, scratch2, static_cast<size_t>(len)) != 0) differs = true;
    }
  }
  auto report = [&](uint64_t kind, uint64_t actual) {
    if (r.bad_count < capacity) {
      bad[3 * r.bad_count] = static_cast<uint64_t>(p);
      bad[3 * r.bad_count + 1] = kind;
      bad[3 * r.bad_count + 2] = actual;
    }
    ++r.bad_count;
  };
  if (present && (flags & kVerifyChecksums) && h.Digest() != LoadLe64(b.csums + 8 * p)) report(kBadChecksum, h.Digest());
  if (!present && absent_zero && nonzero) report(kAbsentNotZero, h.Digest());
  if (differs) report(kDiffersFromLive, lh.Digest());
  return r;
}

}  // namespace fixedram

namespace fixedram {

namespace {

int64_t ClockNs(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t MonotonicNs() { return ClockNs(CLOCK_MONOTONIC); }

// ---- reading a source through a read-only mapping, safe against a concurrent truncation ----
//
// A source truncated while it is mapped makes the next access to a page past its new end raise
// SIGBUS. A guarded region records, per thread, the mapped range and a jump buffer; the SIGBUS
// handler jumps back out of the region when the fault address lies in that range and otherwise
// hands the signal to whatever handler was installed before (or the default action). Code inside a
// guarded region only reads the mapping, zero-scans, hashes and copies: no allocation, no object
// with a destructor, nothing a jump could leave half done. SA_NODEFER keeps SIGBUS unblocked after
// the jump, so sigsetjmp need not save the signal mask (a system call per region).
//
// The guard state is volatile and fenced against the handler (std::atomic_signal_fence): the
// compiler sees no reader of it between "set" and "clear" (only the handler reads it), so without
// both it may drop the store of the jump buffer as dead, as GCC 12 -O3 did for the region that
// copies pages out with memcpy. The region was then unguarded, and the handler, installed once per
// template instance and so chained to itself, spun forever on the fault: a hung update.
thread_local sigjmp_buf* volatile tl_jump = nullptr;
thread_local const unsigned char* volatile tl_lo = nullptr;
thread_local const unsigned char* volatile tl_hi = nullptr;
thread_local const unsigned char* volatile tl_fault = nullptr;
struct sigaction g_previous_bus;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const unsigned char* at = static_cast<const unsigned char*>(info->si_addr);
  sigjmp_buf* jump = tl_jump;
  if (jump != nullptr && at >= tl_lo && at < tl_hi) {
    tl_fault = at;
    siglongjmp(*jump, 1);
  }
  // never hand the signal to ourselves: that would retry the fault forever
  if (g_previous_bus.sa_flags & SA_SIGINFO) {
    if (g_previous_bus.sa_sigaction != nullptr && g_previous_bus.sa_sigaction != OnSigbus) {
      return g_previous_bus.sa_sigaction(sig, info, context);
    }
  } else if (g_previous_bus.sa_handler != SIG_DFL && g_previous_bus.sa_handler != SIG_IGN) {
    return g_previous_bus.sa_handler(sig);
  }
  // not ours and nobody else's: the default action, when the faulting access is retried
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGBUS, &dfl, nullptr);
}

// Installs the handler once per process (a static in a function template would be one per
// instance, each install chaining to the one before it).
bool SigbusHandlerInstalled() {
  static const bool installed = [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &g_previous_bus) == 0;
  }();
  return installed;
}

// Runs fn over [lo, lo + len); false (with *fault set) when an access raised SIGBUS.
template <typename Fn>
bool Guarded(const unsigned char* lo, size_t len, const unsigned char** fault, Fn fn) {
  if (!SigbusHandlerInstalled()) return false;
  sigjmp_buf jump;
  tl_lo = lo;
  tl_hi = lo + len;
  tl_fault = nullptr;
  if (sigsetjmp(jump, 0) != 0) {
    tl_jump = nullptr;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    *fault = tl_fault;
    return false;
  }
  tl_jump = &jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  fn();
  std::atomic_signal_fence(std::memory_order_seq_cst);
  tl_jump = nullptr;
  return true;
}

// Maps the batch's pages of src when that is safe and cheap: host-sized pages (a read fault on a
// hole of a tmpfs or hugetlbfs file would allocate memory; large pages are read instead). False:
// read with preadv instead (a file that cannot be mapped, or an odd page size).
bool MapBatch(const BlockFile& src, const PageBatch& b, Mapping* m) {
  static const int64_t host = sysconf(_SC_PAGESIZE);
  if (src.page_size != host || b.count <= 0) return false;
  const int64_t off = PageOffset(src, b.first);
  const size_t len = static_cast<size_t>(b.count * src.page_size);
  void* p = mmap(nullptr, len, PROT_READ, MAP_SHARED, src.fd, off);
  if (p == MAP_FAILED) return false;
  m->base = static_cast<unsigned char*>(p);
  m->len = len;
  return true;
}

}  // namespace

SaveResult UpdatePages(const BlockFile& src, const BlockFile& dst, const PageBatch& b, uint32_t flags,
                       UpdateTimes* times) {
  struct CpuTime {  // adds this thread's CPU time of the call, however it ends
    int64_t* into;
    int64_t start = ClockNs(CLOCK_THREAD_CPUTIME_ID);
    ~CpuTime() { *into += ClockNs(CLOCK_THREAD_CPUTIME_ID) - start; }
  } cpu{&times->cpu_ns};
  if (InPieces(b, src.page_size)) return SaveHugePage(src, dst, b, flags);
  SaveResult r;
  const int64_t ps = src.page_size;
  const int64_t n = b.count;
  const bool rewrite = (flags & kSaveRewrite) != 0;
  const int64_t chunk = std::max<int64_t>(1, kUpdateChunkBytes / ps);

  std::vector<uint8_t> cand(static_cast<size_t>(n), 1);
  if ((flags & kSaveMask) && b.mask != nullptr) {
    for (int64_t i = 0; i < n; ++i) cand[i] = b.mask[b.first + i] ? 1 : 0;
  }
  std::vector<uint8_t> now(static_cast<size_t>(n), 0);
  std::vector<uint64_t> hash(static_cast<size_t>(n), 0);
  std::vector<uint8_t> act(static_cast<size_t>(n), 0);  // 1 = write, 2 = punch, 0 = nothing
  auto classify = [&](const unsigned char* pages, int64_t q) {
    const unsigned char* page = pages + q * ps;
    if (IsZero(page, static_cast<size_t>(ps))) return;
    now[q] = 1;
    hash[q] = Xxh3Hash(page, static_cast<size_t>(ps));
  };
  // The source went short under us: the same error a short read gives (ERR_SHORT_READ).
  auto shrank = [&](const Mapping& m, const unsigned char* fault) -> SysError {
    const int64_t at = fault != nullptr ? static_cast<int64_t>(fault - m.base) : 0;
    return SysError{0, "mmap read", PageOffset(src, b.first) + at, src.role};
  };

  int64_t t0 = MonotonicNs();
  Mapping m;
  const bool mapped = (flags & kUpdateNoMap) == 0 && MapBatch(src, b, &m);
  if (mapped) {
    // zero-scan and hash straight from the page cache: no copy
    int64_t t1 = MonotonicNs();
    times->read_ns += t1 - t0;
    const unsigned char* fault = nullptr;
    if (!Guarded(m.base, m.len, &fault, [&] {
          ForRuns(cand, 1, [&](int64_t i, int64_t j) {
            for (int64_t q = i; q < j; ++q) classify(m.base, q);
          });
        })) {
      throw shrank(m, fault);
    }
    for (int64_t i = 0; i < n; ++i) r.bytes_read += cand[i] ? ps : 0;
    t0 = MonotonicNs();
    times->hash_ns += t0 - t1;
  } else {
    // read and classify chunk by chunk: a chunk is hashed right after its read, while it is still
    // in the cache, instead of reading the whole batch (more than the L2 cache) and hashing after
    ForRuns(cand, 1, [&](int64_t i, int64_t j) {
      for (int64_t k = i; k < j; k += chunk) {
        const int64_t e = std::min(j, k + chunk);
        r.bytes_read += ReadRun(src, b, k, e);
        const int64_t t1 = MonotonicNs();
        times->read_ns += t1 - t0;
        for (int64_t q = k; q < e; ++q) classify(b.scratch, q);
        t0 = MonotonicNs();
        times->hash_ns += t0 - t1;
      }
    });
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = b.first + i;
    const bool was = b.present[p] != 0;
    if (now[i]) {
      act[i] = (rewrite || !was || LoadLe64(b.csums + 8 * p) != hash[i]) ? 1 : 0;
    } else {
      act[i] = (rewrite || was) ? 2 : 0;
    }
    if (act[i] == 0) ++r.unchanged_pages;
  }
  if (mapped) {
    // the pages to write are copied out of the mapping (guarded) so that pwritev never reads a
    // mapping: a fault there would be reported as a failed write of the snapshot
    const unsigned char* fault = nullptr;
    if (!Guarded(m.base, m.len, &fault, [&] {
          ForRuns(act, 1, [&](int64_t i, int64_t j) {
            memcpy(b.scratch + i * ps, m.base + i * ps, static_cast<size_t>((j - i) * ps));
          });
        })) {
      throw shrank(m, fault);
    }
  }
  int64_t t1 = MonotonicNs();
  times->hash_ns += t1 - t0;

  std::vector<struct iovec> iov;
  ForRuns(act, 1, [&](int64_t i, int64_t j) {
    RunIovecs(b.scratch, ps, i, j, &iov);
    r.bytes_written += On(dst, [&] {
      return static_cast<int64_t>(PwritevFull(dst.fd, iov.data(), iov.size(), PageOffset(dst, b.first + i)));
    });
    r.written_pages += j - i;
  });
  int64_t t2 = MonotonicNs();
  times->write_ns += t2 - t1;
  // Pages that became zero are punched in runs that also span the pages absent before and after
  // (their slots are holes or zeros already), so new zero pages between holes cost one fallocate,
  // not one each: a punch is an extent-tree change and a journal transaction.
  std::vector<uint8_t> punch(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    punch[i] = act[i] == 2 ? 1 : (act[i] == 0 && !now[i] && b.present[b.first + i] == 0) ? 2 : 0;
  }
  for (int64_t i = 0; i < n;) {
    if (punch[i] != 1) {
      ++i;
      continue;
    }
    int64_t j = i + 1;  // [i, j): starts at a page to punch, extends over both kinds ...
    int64_t last = i;   // ... and ends after the last page to punch
    for (; j < n && punch[j] != 0; ++j) {
      if (punch[j] == 1) last = j;
    }
    On(dst, [&] {
      const int64_t off = PageOffset(dst, b.first + i);
      if (!PunchHole(dst.fd, off, (last + 1 - i) * ps)) {
        // no hole punching here: zeros, written for the pages that need them only
        for (int64_t q = i; q <= last; ++q) {
          if (punch[q] == 1) WriteZeros(dst.fd, PageOffset(dst, b.first + q), ps);
        }
      }
    });
    for (int64_t q = i; q <= last; ++q) r.punched_pages += punch[q] == 1 ? 1 : 0;
    i = j;
  }
  times->punch_ns += MonotonicNs() - t2;

  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = b.first + i;
    b.present[p] = now[i];
    StoreLe64(b.csums + 8 * p, hash[i]);
    r.present_pages += now[i];
  }
  return r;
}

}  // namespace fixedram
