// SPDX-License-Identifier: MIT
// Block-aware page movers. Every file offset is computed here from a block's base offset and a page
// index (base + index * page_size, overflow-checked); no offset is ever derived from a pointer.
#ifndef NATIVE_PAGES_H_
#define NATIVE_PAGES_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace fixedram {

// Where a block's pages live in one file: page i is at base + i * page_size.
struct BlockFile {
  int fd;
  int64_t base;
  int64_t page_size;
  int role;  // 0 or 1: the position of this file among the operation's files, reported with errors
};

// The pages [first, first + count) of a block, and the block's per-page tables. csums holds one
// little-endian XXH3-64 per page of the whole block; present holds one byte per page (1 = present).
struct PageBatch {
  int64_t first;
  int64_t count;
  unsigned char* csums;
  unsigned char* present;
  unsigned char* scratch;  // at least count * page_size bytes
  // One byte per page of the whole block: 1 where the file may hold data (see MarkDataPages), or
  // null. Filled once per block by the main thread, because asking SEEK_HOLE per batch costs a scan
  // to the next hole on tmpfs, which is the end of the file when the file is dense.
  const unsigned char* mask = nullptr;
  // Bytes of scratch. A batch of one page larger than kPieceBytes may come with a smaller scratch:
  // such a page is moved and hashed in pieces (see the *HugePage functions), so a channel never
  // holds a whole huge page.
  int64_t scratch_bytes = 0;
};

// Huge pages are read, hashed, compared and written in pieces of this many bytes.
constexpr int64_t kPieceBytes = int64_t{4} << 20;

// True when the batch is one page handled in pieces (its scratch is smaller than the page).
inline bool InPieces(const PageBatch& b, int64_t page_size) { return b.count == 1 && b.scratch_bytes < page_size; }

enum SaveFlags : uint32_t {
  kSaveSeekData = 1u << 0,   // skip source holes found with SEEK_DATA/SEEK_HOLE
  kSaveMask = 1u << 1,       // mask[] says which source pages may hold data; the others are zero
  kSaveUpdate = 1u << 2,     // present[]/csums[] on entry are the stored state: write only changes
  kSaveRewrite = 1u << 3,    // with kSaveUpdate: write/punch every page (repair of a torn update)
  kSaveWriteback = 1u << 4,  // start write-back of written ranges at once (sync_file_range)
};

struct SaveResult {
  int64_t present_pages = 0;
  int64_t bytes_read = 0;
  int64_t bytes_written = 0;
  int64_t written_pages = 0;
  int64_t punched_pages = 0;
  int64_t unchanged_pages = 0;
};

// Reads the batch's pages from src, finds zero pages, hashes the others and writes every run of
// present pages to dst with pwritev. Fills present[] and csums[] for the batch.
SaveResult SavePages(const BlockFile& src, const BlockFile& dst, const PageBatch& batch, uint32_t flags);

enum LoadFlags : uint32_t {
  kLoadVerify = 1u << 0,       // check every present page's XXH3 before it is written
  kLoadZeroAbsent = 1u << 1,   // make absent pages zero in dst (punch a hole, else write zeros)
  kLoadMmapTarget = 1u << 2,   // dst is written through a shared mapping (hugetlbfs)
  // Before reading a batch, ask the kernel to read all of its present pages at once
  // (POSIX_FADV_WILLNEED from the first to the last, holes cost no I/O): the device gets the
  // batch as large requests in flight together, not one small synchronous read per run of pages.
  kLoadWillNeed = 1u << 3,
};

struct LoadResult {
  int64_t bytes_read = 0;
  int64_t bytes_written = 0;
  int64_t zeroed_pages = 0;
  int64_t bad_page = -1;  // first page whose checksum failed; nothing of the batch was written then
  uint64_t bad_actual = 0;
};

// Reads the batch's present pages from the snapshot and writes them to dst; absent pages are made
// zero when asked.
LoadResult LoadPages(const BlockFile& snap, const BlockFile& dst, const PageBatch& batch, uint32_t flags);

enum VerifyKind : uint64_t {
  kBadChecksum = 1,      // a present page whose XXH3 differs from the table
  kAbsentNotZero = 2,    // an absent page whose slot holds non-zero bytes
  kDiffersFromLive = 3,  // the page differs from the live file it is compared against
};

struct VerifyResult {
  int64_t bytes_read = 0;
  int64_t bad_count = 0;  // may exceed the capacity of the output table
};

// Checks a batch: present pages against their checksums, absent slots read as zero, and (when
// against.fd >= 0) every page against the live file. Writes (page, kind, actual hash) triples into
// bad (capacity triples at most). scratch2 (count * page_size bytes) is used for the live file.
enum VerifyFlags : uint32_t {
  kVerifyChecksums = 1u << 0,   // the image has per-page checksums to check
  kVerifyAbsentZero = 1u << 1,  // absent slots must read as zero (fixedram; QEMU may leave stale data)
  kVerifyDataMask = 1u << 2,    // mask[] says which slots of the snapshot hold data (else SEEK_DATA per batch)
};

VerifyResult VerifyPages(const BlockFile& snap, const BlockFile& against, const PageBatch& batch,
                         unsigned char* scratch2, uint64_t* bad, int64_t capacity, uint32_t flags);

// The same operations on one page larger than kPieceBytes, moved, hashed and compared in pieces of
// kPieceBytes (b.scratch holds one piece): memory per channel stays bounded for any page size.
// SavePages, LoadPages and VerifyPages call these for a batch with InPieces(b, page_size).
SaveResult SaveHugePage(const BlockFile& src, const BlockFile& dst, const PageBatch& batch, uint32_t flags);
LoadResult LoadHugePage(const BlockFile& snap, const BlockFile& dst, const PageBatch& batch, uint32_t flags);
VerifyResult VerifyHugePage(const BlockFile& snap, const BlockFile& against, const PageBatch& batch,
                            unsigned char* scratch2, uint64_t* bad, int64_t capacity, uint32_t flags);

// Sets mask[p] = 1 for every page p in [first, first + count) of the block that overlaps a data
// extent of the file (SEEK_DATA/SEEK_HOLE, one walk), 0 for pages inside holes. Returns false, with
// every page set, when the file system gives no hole information. With `ready`, the walk publishes
// as it goes how many pages from `first` on are final (atomic store, release; count at the end), so
// another thread can use the first pages while the rest is still walked.
bool MarkDataPages(const BlockFile& f, int64_t first, int64_t count, unsigned char* mask, int32_t* ready = nullptr);

// Time spent in each phase of UpdatePages, in nanoseconds (CLOCK_MONOTONIC), summed by the caller.
struct UpdateTimes {
  int64_t read_ns = 0;   // preadv of the source
  int64_t hash_ns = 0;   // zero scan, XXH3 and the comparison with the stored table
  int64_t write_ns = 0;  // pwritev of changed pages
  int64_t punch_ns = 0;  // punching pages that became zero
  int64_t cpu_ns = 0;    // CPU time of the calling thread in the whole call (CLOCK_THREAD_CPUTIME_ID)
};

// The --update mover (kSaveUpdate, optionally kSaveRewrite; kSaveMask as for SavePages): hashes the
// batch's candidate pages straight from a read-only mapping of the source (host-sized pages; a
// SIGBUS from a source truncated meanwhile is caught and reported as a short read, errno 0), or
// else reads them in runs of at most kUpdateChunkBytes and hashes each run while it is still in
// the CPU cache; then writes only changed pages and punches pages that became zero. Fills present[]
// and csums[] exactly as SavePages does. kSaveWriteback is ignored: the caller starts write-back
// from another thread so no channel waits for the device.
constexpr int64_t kUpdateChunkBytes = 128 << 10;
constexpr uint32_t kUpdateNoMap = 1u << 8;  // read with preadv, never map the source
SaveResult UpdatePages(const BlockFile& src, const BlockFile& dst, const PageBatch& batch, uint32_t flags,
                       UpdateTimes* times);
// Streams XXH3-64 (seed 0) over the byte ranges (offset, length) of a file, in order, as if they were
// one buffer. Holes (SEEK_DATA/SEEK_HOLE) are hashed as zeros without being read, so the cost follows
// the data present plus the hashing of the ranges' length. Sets *popcount to the number of bits set
// in the first range. Memory: one bounded buffer.
uint64_t HashRanges(int fd, const std::vector<std::pair<int64_t, int64_t>>& ranges, uint64_t* popcount);

}  // namespace fixedram

#endif  // NATIVE_PAGES_H_
