// Opening an edgekiln artifact without Python: the same rules and refusals as the Python
// runtime (edgekiln/artifact/package.py, paths.py, manifest.py and runtime/compat.py).
#ifndef EDGEKILN_NATIVE_ARTIFACT_H_
#define EDGEKILN_NATIVE_ARTIFACT_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgekiln {

// A refusal: the artifact is damaged, hostile or not for this device. The message is one
// line, as the Python runtime words it.
struct ArtifactError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr uint64_t kMaxManifestBytes = 1 << 20;
constexpr size_t kMaxFiles = 10000;
constexpr uint64_t kMaxTensorElements = uint64_t(1) << 31;

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t elements() const;
  size_t itemsize() const;
};

struct FileEntry {
  std::string path;
  uint64_t size = 0;
  std::string sha256;
  std::string role;
};

struct Manifest {
  std::string profile;
  std::string backend;
  std::string arch;
  std::string os;
  std::string glibc;
  std::vector<std::string> cpu_features;
  bool cuda = false;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<FileEntry> files;
  std::string labels;  // empty when the artifact has none
  const FileEntry* file(const std::string& role) const;
};

// Parses and validates manifest.json's bytes.
Manifest ParseManifest(const std::string& text);

// The one check for every path a manifest names (paths.py's check_member_path).
void CheckMemberPath(const std::string& name, const char* what = "artifact path");

// An artifact opened and verified: ``root`` holds every member, checked.
struct OpenedArtifact {
  Manifest manifest;
  std::string root;
  bool temporary = false;  // extracted by us into a private directory; removed on close
};

// Verifies ``path`` (a .tar.gz or an extracted directory) and returns where its members
// are. Nothing is loaded.
OpenedArtifact OpenArtifact(const std::string& path);
void RemoveTree(const std::string& root);

// Every reason this host cannot run the artifact; empty when it can.
std::vector<std::string> CompatibilityProblems(const Manifest& manifest);

// Class names of the labels file (bounded, UTF-8 checked as paths.py does).
std::vector<std::string> ReadLabels(const std::string& root, const std::string& name);

// Sizes from the environment (EDGEKILN_MAX_UNPACKED_BYTES), as package.py reads it.
uint64_t MaxUnpackedBytes();

// Lower-case hex sha256 of a buffer stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  void Update(const void* data, size_t size);
  std::string HexDigest();

 private:
  void* ctx_;
};

}  // namespace edgekiln
#endif  // EDGEKILN_NATIVE_ARTIFACT_H_
