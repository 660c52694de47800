// SPDX-License-Identifier: MIT
// Thin, policy-free wrappers around the syscalls fixedram uses. Every wrapper retries EINTR and
// partial transfers; failures are thrown as SysError (a positive errno plus the syscall name).
#ifndef NATIVE_SYS_H_
#define NATIVE_SYS_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fixedram {

// A failed syscall. errno_value is positive; 0 means "unexpected end of file" (a short read that
// could not be completed), in which case offset says where the data ran out.
struct SysError {
  int errno_value;
  const char* syscall;
  int64_t offset;
  int file = -1;  // which file of the operation failed (0: the first BlockFile argument, 1: the second)
};

// Reads exactly len bytes at offset. Throws SysError{0, "pread", offset_of_eof} on end of file.
void PreadFull(int fd, void* buf, size_t len, int64_t offset);

// Writes every byte described by iov (count entries) at offset: splits at IOV_MAX and retries
// partial writes and EINTR. Returns the bytes written (the sum of the iov lengths).
uint64_t PwritevFull(int fd, const struct iovec* iov, size_t count, int64_t offset);

// Reads into every byte described by iov at offset (same rules; EOF throws as PreadFull does).
uint64_t PreadvFull(int fd, const struct iovec* iov, size_t count, int64_t offset);

// Deallocates [offset, offset+len) keeping the size. Returns false (without throwing) when the file
// system does not support hole punching (EOPNOTSUPP, ENOSYS, EINVAL on a few), so callers can write
// zeros instead.
bool PunchHole(int fd, int64_t offset, int64_t len);

// Writes len zero bytes at offset with a shared zero buffer.
void WriteZeros(int fd, int64_t offset, int64_t len);

// Finds the data extents of [lo, hi) with SEEK_DATA/SEEK_HOLE. Appends [start, end) pairs clipped
// to [lo, hi). Returns false when the file system gives no hole information (the caller then treats
// the whole range as data).
bool DataExtents(int fd, int64_t lo, int64_t hi, std::vector<std::pair<int64_t, int64_t>>* out);

// As DataExtents, but stops after max extents (the caller continues from the last end).
bool DataExtentsUpTo(int fd, int64_t lo, int64_t hi, int64_t max, std::vector<std::pair<int64_t, int64_t>>* out);

// True when len bytes at p are all zero. len must be a multiple of 64.
bool IsZero(const unsigned char* p, size_t len);

// Starts write-back of [offset, offset+len) without waiting (sync_file_range WRITE). Best effort.
void StartWriteback(int fd, int64_t offset, int64_t len);

// Opens `rel` (components separated by '/', none empty, '.' or '..') below the directory dirfd
// without ever following a symbolic link or leaving the directory: each component is opened
// relative to the descriptor of the one before it with O_NOFOLLOW (openat2 with RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS for the whole path where the kernel has it and no directory is to be made).
// With mkdir_mode >= 0 missing intermediate directories are made with mkdirat and then fchmod'ed to
// exactly mkdir_mode through their own descriptor. The final component is opened with
// flags | O_NOFOLLOW | O_CLOEXEC and mode. Returns the descriptor; throws SysError (offset = the
// index of the component that failed).
int OpenBeneath(int dirfd, const std::string& rel, int flags, int mode, int mkdir_mode);

// Unlinks the file `rel` below dirfd, reaching its directory as OpenBeneath does (no symlinks).
void UnlinkBeneath(int dirfd, const std::string& rel);

}  // namespace fixedram

#endif  // NATIVE_SYS_H_
