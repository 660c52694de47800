// SPDX-License-Identifier: MIT
// N-API surface of fixedram: a few synchronous functions called from worker threads; the page movers
// take one options object (fields by name), the small calls positional arguments.
// TypeScript validates every argument; the guards here only keep a bad call from crashing.
#include <errno.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <napi.h>

#include "hash.h"
#include "pages.h"
#include "sys.h"

namespace fixedram {

namespace {

constexpr double kMaxSafe = 9007199254740991.0;

[[noreturn]] void Fail(Napi::Env env, const std::string& what) { throw Napi::TypeError::New(env, what); }

// Argument i, or undefined when there are fewer.
Napi::Value Arg(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() ? info[i] : info.Env().Undefined(); }

int64_t IntOf(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) Fail(env, std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < -1 || d > kMaxSafe) Fail(env, std::string(name) + " must be a safe integer >= -1");
  return static_cast<int64_t>(d);
}

int FdOf(Napi::Env env, const Napi::Value& v, const char* name) {
  int64_t fd = IntOf(env, v, name);
  if (fd > INT32_MAX) Fail(env, std::string(name) + " is not a file descriptor");
  return static_cast<int>(fd);
}

// A Uint8Array (or Buffer) with at least min_bytes bytes.
Napi::Uint8Array BytesOf(Napi::Env env, const Napi::Value& v, const char* name, int64_t min_bytes) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(env, std::string(name) + " must be a Uint8Array");
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  if (static_cast<int64_t>(a.ByteLength()) < min_bytes) Fail(env, std::string(name) + " is too short");
  return a;
}

int64_t PageSizeOf(Napi::Env env, const Napi::Value& v) {
  int64_t ps = IntOf(env, v, "pageSize");
  if (ps < 64 || (ps & (ps - 1)) != 0 || ps > (int64_t{1} << 30)) Fail(env, "pageSize must be a power of two");
  return ps;
}

// Positional arguments (the short calls).
int64_t Int(const Napi::CallbackInfo& info, size_t i, const char* name) { return IntOf(info.Env(), Arg(info, i), name); }
int Fd(const Napi::CallbackInfo& info, size_t i, const char* name) { return FdOf(info.Env(), Arg(info, i), name); }
unsigned char* Bytes(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min_bytes) {
  return BytesOf(info.Env(), Arg(info, i), name, min_bytes).Data();
}
int64_t PageSize(const Napi::CallbackInfo& info, size_t i) { return PageSizeOf(info.Env(), Arg(info, i)); }

// The one options object of a page mover (savePages, updatePages, loadPages, verifyPages), read by
// field name; a missing or mistyped field is a TypeError naming it.
class Options {
 public:
  Options(const Napi::CallbackInfo& info, size_t i) : env_(info.Env()) {
    Napi::Value v = Arg(info, i);
    if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) Fail(env_, "the options must be an object");
    obj_ = v.As<Napi::Object>();
  }
  Napi::Value Get(const char* name) const { return obj_.Get(name); }
  int64_t Int(const char* name) const { return IntOf(env_, Get(name), name); }
  int Fd(const char* name) const { return FdOf(env_, Get(name), name); }
  unsigned char* Bytes(const char* name, int64_t min_bytes) const { return BytesOf(env_, Get(name), name, min_bytes).Data(); }
  uint32_t Flags() const { return static_cast<uint32_t>(Int("flags")); }
  int64_t PageSize() const { return PageSizeOf(env_, Get("pageSize")); }
  // {fd, base} of a file, e.g. File("src") reads srcFd and srcBase.
  BlockFile File(const std::string& prefix, int64_t ps, int role) const {
    const std::string fd = prefix + "Fd";
    const std::string base = prefix + "Base";
    return BlockFile{Fd(fd.c_str()), Int(base.c_str()), ps, role};
  }
  // The batch: firstPage, pageCount and the block tables (scratch, csums, present).
  PageBatch Batch(int64_t ps) const {
    PageBatch b;
    b.first = Int("firstPage");
    b.count = Int("pageCount");
    if (b.first < 0 || b.count < 0 || b.count > (int64_t{1} << 30) / 64) Fail(env_, "bad page range");
    // one page larger than a piece may come with a piece-sized scratch (moved in pieces)
    const int64_t need = (b.count == 1 && ps > kPieceBytes) ? kPieceBytes : b.count * ps;
    Napi::Uint8Array scratch = BytesOf(env_, Get("scratch"), "scratch", need);
    b.scratch = scratch.Data();
    b.scratch_bytes = static_cast<int64_t>(scratch.ByteLength());
    b.csums = Bytes("csums", 8 * (b.first + b.count));
    b.present = Bytes("present", b.first + b.count);
    return b;
  }

 private:
  Napi::Env env_;
  Napi::Object obj_;
};

Napi::Error SysErrorValue(Napi::Env env, const SysError& e) {
  Napi::Error err = Napi::Error::New(env, std::string(e.syscall) + " failed");
  err.Set("errno", Napi::Number::New(env, e.errno_value));
  err.Set("syscall", Napi::String::New(env, e.syscall));
  err.Set("offset", Napi::Number::New(env, static_cast<double>(e.offset)));
  err.Set("file", Napi::Number::New(env, e.file));
  return err;
}

[[noreturn]] void ThrowSys(Napi::Env env, const SysError& e) { throw SysErrorValue(env, e); }

Napi::Array Numbers(Napi::Env env, std::initializer_list<int64_t> values) {
  Napi::Array a = Napi::Array::New(env, values.size());
  uint32_t i = 0;
  for (int64_t v : values) a.Set(i++, Napi::Number::New(env, static_cast<double>(v)));
  return a;
}

Napi::Value HostPageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

// fstatfs(fd) -> [f_type, f_bsize]
Napi::Value Fstatfs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  struct statfs s;
  if (fstatfs(fd, &s) != 0) ThrowSys(info.Env(), SysError{errno, "fstatfs", 0});
  return Numbers(info.Env(), {static_cast<int64_t>(static_cast<uint32_t>(s.f_type)), static_cast<int64_t>(s.f_bsize)});
}

// hash64(bytes) -> bigint (XXH3-64, seed 0)
Napi::Value Hash(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) Fail(info.Env(), "bytes must be a Uint8Array");
  Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
  return Napi::BigInt::New(info.Env(), Xxh3Hash(a.Data(), a.ByteLength()));
}

// hashUnit() -> "avx512" | "avx2" | "sse2": the vector unit XXH3 runs on in this process
Napi::Value HashUnit(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), Xxh3Unit()); }

// The options of savePages and updatePages.
struct SaveArgs {
  BlockFile src;
  BlockFile dst;
  PageBatch batch;
  uint32_t flags;
};

SaveArgs ReadSaveArgs(const Options& o) {
  const int64_t ps = o.PageSize();
  SaveArgs a{o.File("src", ps, 0), o.File("dst", ps, 1), o.Batch(ps), o.Flags()};
  a.batch.mask = (a.flags & kSaveMask) ? o.Bytes("mask", a.batch.first + a.batch.count) : nullptr;
  return a;
}

// savePages({srcFd, srcBase, dstFd, dstBase, pageSize, firstPage, pageCount, scratch, csums, present,
//            mask, flags})
// The per-page table loops of a snapshot's bitmap (LE bytes, bit i = page i) and checksum table,
// here because a CLI run executes each of them once, cold: in JavaScript a 2 GiB block's 512 Ki
// pages cost tens of milliseconds per loop before the JIT catches up, here well under one.

// packBits(present, pages, out) -> set bits; bit i of out = (present[i] != 0), for i < pages (out
// zeroed by the caller: only its non-zero bytes are written)
Napi::Value PackBitsJs(const Napi::CallbackInfo& info) {
  const int64_t pages = std::max<int64_t>(0, Int(info, 1, "pages"));
  const unsigned char* present = Bytes(info, 0, "present", pages);
  unsigned char* out = Bytes(info, 2, "out", (pages + 7) / 8);
  int64_t count = 0;
  for (int64_t k = 0; k < (pages + 7) / 8; ++k) {
    const int64_t n = std::min<int64_t>(8, pages - 8 * k);
    unsigned v = 0;
    for (int64_t j = 0; j < n; ++j) v |= (present[8 * k + j] != 0 ? 1u : 0u) << j;
    if (v != 0) out[k] = static_cast<unsigned char>(v);  // out is zeroed: untouched memory stays untouched
    count += __builtin_popcount(v);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// unpackBits(bitmap, bytes, into) -> set bits; into[i] = bit i (0 or 1) for i < 8 * bytes, except
// that the pages of a zero byte are left as they are (callers pass zeroed memory)
Napi::Value UnpackBitsJs(const Napi::CallbackInfo& info) {
  const int64_t bytes = std::max<int64_t>(0, Int(info, 1, "bytes"));
  const unsigned char* bitmap = Bytes(info, 0, "bitmap", bytes);
  unsigned char* into = Bytes(info, 2, "into", 8 * bytes);
  int64_t count = 0;
  for (int64_t k = 0; k < bytes; ++k) {
    const unsigned v = bitmap[k];
    if (v == 0) continue;  // into is zeroed: a huge sparse block's table stays untouched (its RSS)
    for (int j = 0; j < 8; ++j) into[8 * k + j] = static_cast<unsigned char>((v >> j) & 1u);
    count += __builtin_popcount(v);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// absentNonZero(bitmap, csums, pages) -> the first page < pages whose bit is clear (or past the
// bitmap) and whose 8-byte entry in csums is not 0, or -1; only pages with a whole entry count
Napi::Value AbsentNonZeroJs(const Napi::CallbackInfo& info) {
  const int64_t pages = std::max<int64_t>(0, Int(info, 2, "pages"));
  const unsigned char* bitmap = Bytes(info, 0, "bitmap", 0);
  const int64_t bitmap_bytes = static_cast<int64_t>(info[0].As<Napi::Uint8Array>().ByteLength());
  const unsigned char* csums = Bytes(info, 1, "csums", 0);
  const int64_t n = std::min<int64_t>(pages, static_cast<int64_t>(info[1].As<Napi::Uint8Array>().ByteLength()) / 8);
  for (int64_t p = 0; p < n; ++p) {
    const int64_t k = p >> 3;
    const unsigned v = k < bitmap_bytes ? bitmap[k] : 0u;
    if (v == 0xff) {
      p |= 7;  // eight present pages: next byte
      continue;
    }
    if ((v >> (p & 7)) & 1u) continue;
    uint64_t entry;
    memcpy(&entry, csums + 8 * p, 8);
    if (entry != 0) return Napi::Number::New(info.Env(), static_cast<double>(p));
  }
  return Napi::Number::New(info.Env(), -1);
}

// savePages(srcFd, srcBase, dstFd, dstBase, pageSize, firstPage, pageCount, scratch, csums, present, mask, flags)
//   mask: Uint8Array, one byte per page of the block (used with kSaveMask; may be empty otherwise)
//   -> [presentPages, bytesRead, bytesWritten, writtenPages, punchedPages, unchangedPages]
Napi::Value SavePagesJs(const Napi::CallbackInfo& info) {
  SaveArgs a = ReadSaveArgs(Options(info, 0));
  try {
    SaveResult r = SavePages(a.src, a.dst, a.batch, a.flags);
    return Numbers(info.Env(), {r.present_pages, r.bytes_read, r.bytes_written, r.written_pages, r.punched_pages,
                                r.unchanged_pages});
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// updatePages({...}): the options of savePages; flags must hold kSaveUpdate
//   -> [presentPages, bytesRead, bytesWritten, writtenPages, punchedPages, unchangedPages,
//       readNs, hashNs, writeNs, punchNs, cpuNs]
Napi::Value UpdatePagesJs(const Napi::CallbackInfo& info) {
  SaveArgs a = ReadSaveArgs(Options(info, 0));
  if (!(a.flags & kSaveUpdate)) Fail(info.Env(), "updatePages needs kSaveUpdate");
  try {
    UpdateTimes t;
    SaveResult r = UpdatePages(a.src, a.dst, a.batch, a.flags, &t);
    return Numbers(info.Env(), {r.present_pages, r.bytes_read, r.bytes_written, r.written_pages, r.punched_pages,
                                r.unchanged_pages, t.read_ns, t.hash_ns, t.write_ns, t.punch_ns, t.cpu_ns});
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// Runs StartWriteback on a libuv pool thread, so the thread that asks never waits for the device.
class WritebackWorker : public Napi::AsyncWorker {
 public:
  WritebackWorker(Napi::Env env, int fd, int64_t offset, int64_t length)
      : Napi::AsyncWorker(env), fd_(fd), offset_(offset), length_(length), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }
  void Execute() override { StartWriteback(fd_, offset_, length_); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  int fd_;
  int64_t offset_;
  int64_t length_;
  Napi::Promise::Deferred deferred_;
};

// syncRangeAsync(fd, offset, length) -> Promise<void>: syncRange off the calling thread. The caller
// keeps fd open until the promise settles.
Napi::Value SyncRangeAsyncJs(const Napi::CallbackInfo& info) {
  auto* w = new WritebackWorker(info.Env(), Fd(info, 0, "fd"), Int(info, 1, "offset"), Int(info, 2, "length"));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// loadPages({snapFd, snapBase, dstFd, dstBase, pageSize, firstPage, pageCount, scratch, csums, present, flags})
//   -> [bytesRead, bytesWritten, zeroedPages, badPage, badActual (bigint)]
Napi::Value LoadPagesJs(const Napi::CallbackInfo& info) {
  const Options o(info, 0);
  const int64_t ps = o.PageSize();
  BlockFile snap = o.File("snap", ps, 0);
  BlockFile dst = o.File("dst", ps, 1);
  PageBatch b = o.Batch(ps);
  uint32_t flags = o.Flags();
  try {
    LoadResult r = LoadPages(snap, dst, b, flags);
    Napi::Array a = Numbers(info.Env(), {r.bytes_read, r.bytes_written, r.zeroed_pages, r.bad_page});
    a.Set(4u, Napi::BigInt::New(info.Env(), r.bad_actual));
    return a;
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// verifyPages({snapFd, snapBase, pageSize, firstPage, pageCount, scratch, csums, present, againstFd,
//              againstBase, scratch2, bad (BigUint64Array of triples), flags, mask})
//   -> [bytesRead, badCount]; mask (with kVerifyDataMask): one byte per page, 1 where the slot holds data
Napi::Value VerifyPagesJs(const Napi::CallbackInfo& info) {
  const Options o(info, 0);
  const int64_t ps = o.PageSize();
  BlockFile snap = o.File("snap", ps, 0);
  PageBatch b = o.Batch(ps);
  BlockFile against = o.File("against", ps, 1);
  unsigned char* scratch2 = o.Bytes("scratch2", against.fd >= 0 ? std::min<int64_t>(b.count * ps, b.scratch_bytes) : 0);
  Napi::Value bad_value = o.Get("bad");
  if (!bad_value.IsTypedArray() || bad_value.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    Fail(info.Env(), "bad must be a BigUint64Array");
  }
  Napi::BigUint64Array bad = bad_value.As<Napi::BigUint64Array>();
  uint32_t flags = o.Flags();
  if (flags & kVerifyDataMask) b.mask = o.Bytes("mask", b.first + b.count);
  try {
    VerifyResult r = VerifyPages(snap, against, b, scratch2, bad.Data(), static_cast<int64_t>(bad.ElementLength() / 3), flags);
    return Numbers(info.Env(), {r.bytes_read, r.bad_count});
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// markData(fd, base, pageSize, firstPage, pageCount, mask) -> false when the file system has no hole
// information (every page is then marked)
Napi::Value MarkDataJs(const Napi::CallbackInfo& info) {
  const int64_t ps = PageSize(info, 2);
  BlockFile f{Fd(info, 0, "fd"), Int(info, 1, "base"), ps, 0};
  int64_t first = Int(info, 3, "firstPage");
  int64_t count = Int(info, 4, "pageCount");
  if (first < 0 || count < 0) Fail(info.Env(), "bad page range");
  unsigned char* mask = Bytes(info, 5, "mask", first + count);
  try {
    return Napi::Boolean::New(info.Env(), MarkDataPages(f, first, count, mask));
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// MarkDataPages on a libuv pool thread; holds a reference to mask until it settles.
class MarkDataWorker : public Napi::AsyncWorker {
 public:
  MarkDataWorker(Napi::Env env, BlockFile f, int64_t first, int64_t count, Napi::Uint8Array mask,
                 Napi::Value ready)
      : Napi::AsyncWorker(env), f_(f), first_(first), count_(count), data_(mask.Data()),
        mask_(Napi::Persistent(mask)), deferred_(Napi::Promise::Deferred::New(env)) {
    if (!ready.IsUndefined()) {  // checked by MarkDataAsyncJs: an Int32Array of at least one element
      ready_data_ = ready.As<Napi::Int32Array>().Data();
      ready_ = Napi::Persistent(ready.As<Napi::Int32Array>());
    }
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }
  void Execute() override {
    try {
      known_ = MarkDataPages(f_, first_, count_, data_, ready_data_);
    } catch (const SysError& e) {
      error_ = e;
      failed_ = true;
    }
  }
  void OnOK() override {
    if (failed_) deferred_.Reject(SysErrorValue(Env(), error_).Value());
    else deferred_.Resolve(Napi::Boolean::New(Env(), known_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  BlockFile f_;
  int64_t first_;
  int64_t count_;
  unsigned char* data_;
  Napi::Reference<Napi::Uint8Array> mask_;
  int32_t* ready_data_ = nullptr;
  Napi::Reference<Napi::Int32Array> ready_;
  Napi::Promise::Deferred deferred_;
  bool known_ = false;
  bool failed_ = false;
  SysError error_{0, "", 0};
};

// markDataAsync(fd, base, pageSize, firstPage, pageCount, mask, ready?) -> Promise<boolean>: markData
// on a pool thread, so several ranges of a file (or several files) are walked at once. ready: an
// Int32Array whose first element the walk keeps at the number of pages from firstPage on whose
// mask bytes are final (Atomics.load it; pageCount once the walk is done).
Napi::Value MarkDataAsyncJs(const Napi::CallbackInfo& info) {
  const int64_t ps = PageSize(info, 2);
  BlockFile f{Fd(info, 0, "fd"), Int(info, 1, "base"), ps, 0};
  int64_t first = Int(info, 3, "firstPage");
  int64_t count = Int(info, 4, "pageCount");
  if (first < 0 || count < 0) Fail(info.Env(), "bad page range");
  Bytes(info, 5, "mask", first + count);
  Napi::Value ready = info.Length() > 6 ? info[6] : info.Env().Undefined();
  if (!ready.IsUndefined()) {
    if (!ready.IsTypedArray() || ready.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        ready.As<Napi::Int32Array>().ElementLength() < 1) {
      Fail(info.Env(), "ready must be an Int32Array of at least one element");
    }
    if (count > INT32_MAX) Fail(info.Env(), "pageCount too large for ready");
  }
  auto* w = new MarkDataWorker(info.Env(), f, first, count, info[5].As<Napi::Uint8Array>(), ready);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// hashRanges(fd, [offset, length, offset, length, ...]) -> [hash (bigint), popcount of the first range]
Napi::Value HashRangesJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsArray()) Fail(info.Env(), "ranges must be an array");
  Napi::Array a = info[1].As<Napi::Array>();
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (uint32_t i = 0; i + 1 < a.Length(); i += 2) {
    Napi::Value o = a.Get(i);
    Napi::Value l = a.Get(i + 1);
    if (!o.IsNumber() || !l.IsNumber()) Fail(info.Env(), "ranges must hold numbers");
    int64_t off = o.As<Napi::Number>().Int64Value();
    int64_t len = l.As<Napi::Number>().Int64Value();
    if (off < 0 || len < 0 || off > (int64_t{1} << 53) || len > (int64_t{1} << 53)) Fail(info.Env(), "bad range");
    ranges.push_back({off, len});
  }
  try {
    uint64_t pop = 0;
    uint64_t h = HashRanges(fd, ranges, &pop);
    Napi::Array r = Napi::Array::New(info.Env(), 2);
    r.Set(0u, Napi::BigInt::New(info.Env(), h));
    r.Set(1u, Napi::Number::New(info.Env(), static_cast<double>(pop)));
    return r;
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// dataExtents(fd, lo, hi, max) -> [start, end, ...]: at most max data extents of [lo, hi), clipped;
// null when the file system gives no hole information
Napi::Value DataExtentsJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  int64_t lo = Int(info, 1, "lo");
  int64_t hi = Int(info, 2, "hi");
  int64_t max = Int(info, 3, "max");
  if (lo < 0 || hi < lo || max < 1) Fail(info.Env(), "bad extent range");
  try {
    std::vector<std::pair<int64_t, int64_t>> ext;
    if (!DataExtentsUpTo(fd, lo, hi, max, &ext)) return info.Env().Null();
    Napi::Array r = Napi::Array::New(info.Env(), ext.size() * 2);
    uint32_t k = 0;
    for (const auto& e : ext) {
      r.Set(k++, Napi::Number::New(info.Env(), static_cast<double>(e.first)));
      r.Set(k++, Napi::Number::New(info.Env(), static_cast<double>(e.second)));
    }
    return r;
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// willNeed(fd, offset, length): POSIX_FADV_WILLNEED, advice only (a failure changes nothing but the speed)
Napi::Value WillNeedJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  int64_t off = Int(info, 1, "offset");
  int64_t len = Int(info, 2, "length");
  if (off >= 0 && len > 0) (void)posix_fadvise(fd, off, len, POSIX_FADV_WILLNEED);
  return info.Env().Undefined();
}

// punchHole(fd, offset, length) -> true, or false where the file system cannot punch holes
Napi::Value PunchHoleJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  int64_t off = Int(info, 1, "offset");
  int64_t len = Int(info, 2, "length");
  try {
    return Napi::Boolean::New(info.Env(), PunchHole(fd, off, len));
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// flock(fd, exclusive) -> true when taken, false when another process holds it (never waits)
Napi::Value FlockJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  int op = (info.Length() > 1 && info[1].ToBoolean().Value()) ? LOCK_EX : LOCK_SH;
  for (;;) {
    if (flock(fd, op | LOCK_NB) == 0) return Napi::Boolean::New(info.Env(), true);
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(info.Env(), false);
    ThrowSys(info.Env(), SysError{errno, "flock", 0});
  }
}

// syncRange(fd, offset, length): starts write-back of a range without waiting (best effort)
Napi::Value SyncRangeJs(const Napi::CallbackInfo& info) {
  StartWriteback(Fd(info, 0, "fd"), Int(info, 1, "offset"), Int(info, 2, "length"));
  return info.Env().Undefined();
}

// alignedBuffer(bytes) -> ArrayBuffer whose memory is aligned to 4096 bytes (for O_DIRECT)
Napi::Value AlignedBufferJs(const Napi::CallbackInfo& info) {
  int64_t bytes = Int(info, 0, "bytes");
  if (bytes < 1 || bytes > (int64_t{1} << 32)) Fail(info.Env(), "bytes must be from 1 to 2^32");
  void* p = nullptr;
  if (posix_memalign(&p, 4096, static_cast<size_t>(bytes)) != 0) ThrowSys(info.Env(), SysError{ENOMEM, "posix_memalign", 0});
  return Napi::ArrayBuffer::New(info.Env(), p, static_cast<size_t>(bytes), [](Napi::Env, void* data) { free(data); });
}

// blockDeviceSize(fd) -> bytes of a block device (ioctl BLKGETSIZE64)
Napi::Value BlockDeviceSizeJs(const Napi::CallbackInfo& info) {
  int fd = Fd(info, 0, "fd");
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) ThrowSys(info.Env(), SysError{errno, "ioctl", 0});
  return Napi::Number::New(info.Env(), static_cast<double>(size));
}

// The flag and kind values of native/pages.h, so the TypeScript copies in src/native.ts can be
// checked against them (test/native-constants.test.ts).
Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  const std::pair<const char*, double> values[] = {
      {"kSaveSeekData", kSaveSeekData},   {"kSaveMask", kSaveMask},
      {"kSaveUpdate", kSaveUpdate},       {"kSaveRewrite", kSaveRewrite},
      {"kSaveWriteback", kSaveWriteback}, {"kUpdateNoMap", kUpdateNoMap},
      {"kLoadVerify", kLoadVerify},       {"kLoadZeroAbsent", kLoadZeroAbsent},
      {"kLoadMmapTarget", kLoadMmapTarget}, {"kLoadWillNeed", kLoadWillNeed},
      {"kVerifyChecksums", kVerifyChecksums},
      {"kVerifyAbsentZero", kVerifyAbsentZero}, {"kVerifyDataMask", kVerifyDataMask},
      {"kBadChecksum", static_cast<double>(kBadChecksum)}, {"kAbsentNotZero", static_cast<double>(kAbsentNotZero)},
      {"kDiffersFromLive", static_cast<double>(kDiffersFromLive)},
      {"kPieceBytes", static_cast<double>(kPieceBytes)},
  };
  for (const auto& [name, value] : values) c.Set(name, Napi::Number::New(env, value));
  return c;
}

// openBeneath(dirFd, rel, flags, mode, mkdirMode) -> fd: opens rel below dirFd, never following a
// symlink or leaving the directory (see OpenBeneath in sys.h); mkdirMode >= 0 makes missing
// intermediate directories with exactly that mode, -1 makes none.
Napi::Value OpenBeneathJs(const Napi::CallbackInfo& info) {
  int dirfd = Fd(info, 0, "dirFd");
  if (info.Length() < 2 || !info[1].IsString()) Fail(info.Env(), "rel must be a string");
  std::string rel = info[1].As<Napi::String>().Utf8Value();
  if (rel.empty() || rel.size() > 4096 || rel.find('\0') != std::string::npos || rel[0] == '/') Fail(info.Env(), "bad relative path");
  int flags = static_cast<int>(Int(info, 2, "flags"));
  int mode = static_cast<int>(Int(info, 3, "mode"));
  int mkdir_mode = static_cast<int>(Int(info, 4, "mkdirMode"));
  try {
    return Napi::Number::New(info.Env(), OpenBeneath(dirfd, rel, flags, mode, mkdir_mode));
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
}

// unlinkBeneath(dirFd, rel): unlinks rel below dirFd without following a symlink on the way
Napi::Value UnlinkBeneathJs(const Napi::CallbackInfo& info) {
  int dirfd = Fd(info, 0, "dirFd");
  if (info.Length() < 2 || !info[1].IsString()) Fail(info.Env(), "rel must be a string");
  std::string rel = info[1].As<Napi::String>().Utf8Value();
  if (rel.empty() || rel.size() > 4096 || rel.find('\0') != std::string::npos || rel[0] == '/') Fail(info.Env(), "bad relative path");
  try {
    UnlinkBeneath(dirfd, rel);
  } catch (const SysError& e) {
    ThrowSys(info.Env(), e);
  }
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("constants", Constants(env));
  exports.Set("openBeneath", Napi::Function::New(env, OpenBeneathJs, "openBeneath"));
  exports.Set("unlinkBeneath", Napi::Function::New(env, UnlinkBeneathJs, "unlinkBeneath"));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBufferJs, "alignedBuffer"));
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSizeJs, "blockDeviceSize"));
  exports.Set("hostPageSize", Napi::Function::New(env, HostPageSize, "hostPageSize"));
  exports.Set("fstatfs", Napi::Function::New(env, Fstatfs, "fstatfs"));
  exports.Set("hash64", Napi::Function::New(env, Hash, "hash64"));
  exports.Set("hashUnit", Napi::Function::New(env, HashUnit, "hashUnit"));
  exports.Set("packBits", Napi::Function::New(env, PackBitsJs, "packBits"));
  exports.Set("unpackBits", Napi::Function::New(env, UnpackBitsJs, "unpackBits"));
  exports.Set("absentNonZero", Napi::Function::New(env, AbsentNonZeroJs, "absentNonZero"));
  exports.Set("savePages", Napi::Function::New(env, SavePagesJs, "savePages"));
  exports.Set("loadPages", Napi::Function::New(env, LoadPagesJs, "loadPages"));
  exports.Set("verifyPages", Napi::Function::New(env, VerifyPagesJs, "verifyPages"));
  exports.Set("markData", Napi::Function::New(env, MarkDataJs, "markData"));
  exports.Set("hashRanges", Napi::Function::New(env, HashRangesJs, "hashRanges"));
  exports.Set("dataExtents", Napi::Function::New(env, DataExtentsJs, "dataExtents"));
  exports.Set("punchHole", Napi::Function::New(env, PunchHoleJs, "punchHole"));
  exports.Set("willNeed", Napi::Function::New(env, WillNeedJs, "willNeed"));
  exports.Set("flock", Napi::Function::New(env, FlockJs, "flock"));
  exports.Set("syncRange", Napi::Function::New(env, SyncRangeJs, "syncRange"));
  exports.Set("updatePages", Napi::Function::New(env, UpdatePagesJs, "updatePages"));
  exports.Set("markDataAsync", Napi::Function::New(env, MarkDataAsyncJs, "markDataAsync"));
  exports.Set("syncRangeAsync", Napi::Function::New(env, SyncRangeAsyncJs, "syncRangeAsync"));
  return exports;
}

}  // namespace

}  // namespace fixedram

static Napi::Object InitFixedram(Napi::Env env, Napi::Object exports) { return fixedram::Init(env, exports); }

NODE_API_MODULE(fixedram, InitFixedram)
