#pragma once
// Crash-safe file writes: everything goes to a temporary file beside the target, which is
// flushed to disk and renamed over the target only by commit(). A crash or an error at any
// point leaves either the old file or the new one, never a torn mix — checkpoints rely on it.
#include <cstddef>
#include <string>

namespace qkv {

class AtomicFile {
 public:
  /// Creates `<path>.tmp.<pid>`; throws Error naming the file when it cannot.
  explicit AtomicFile(std::string path);
  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends bytes; throws Error naming the file on failure (a full disk, say).
  void write(const void* data, std::size_t size);
  /// fsync, close, rename over the target, fsync the directory. Throws Error on failure,
  /// leaving the target untouched.
  void commit();

 private:
  std::string path_;
  std::string temporary_;
  int fd_ = -1;
  bool committed_ = false;
};

/// AtomicFile for a whole buffer at once.
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace qkv
