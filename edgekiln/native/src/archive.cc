// Opening and verifying an artifact: an extracted directory is checked in place; a .tar.gz
// is read once, as a bounded stream, and extracted into a private directory only after each
// member passed the checks that edgekiln/artifact/package.py applies, in the same order.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "artifact.h"

extern "C" {
#include "sha256.h"
}
#if EDGEKILN_HAVE_ZLIB_H
#include "zlib.h"
#endif

namespace edgekiln {
namespace {

constexpr uint64_t kHeaderAllowance = 64 << 10;
constexpr uint64_t kMaxLabelsBytes = 4 << 20;
constexpr size_t kChunk = 1 << 16;

[[noreturn]] void Fail(const std::string& message) { throw ArtifactError(message); }

std::string Short(const std::string& hex) { return hex.substr(0, 16) + "..."; }

// A file descriptor closed on scope exit.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

std::string HashFile(int fd) {
  Sha256 digest;
  std::vector<char> buf(kChunk);
  ssize_t n;
  while ((n = read(fd, buf.data(), buf.size())) > 0) digest.Update(buf.data(), static_cast<size_t>(n));
  if (n < 0) Fail(std::string("cannot read an artifact member: ") + strerror(errno));
  return digest.HexDigest();
}

// root/name after CheckMemberPath, refusing a path that passes through a symlink.
std::string ResolveMember(const std::string& root, const std::string& name) {
  CheckMemberPath(name);
  std::string path = root;
  size_t start = 0;
  while (true) {
    size_t end = name.find('/', start);
    std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
    path += "/" + part;
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      Fail(name + " in " + root + " passes through a symlink (" + part + ")");
    }
    if (end == std::string::npos) return path;
    start = end + 1;
  }
}

Manifest VerifyDirectory(const std::string& root) {
  std::string manifest_path = root + "/manifest.json";
  struct stat st;
  if (lstat(manifest_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    Fail(root + " holds no manifest.json; give an artifact .tar.gz or its extracted directory");
  }
  Fd fd(open(manifest_path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.fd < 0) Fail("cannot open " + manifest_path + ": " + strerror(errno));
  std::string text(kMaxManifestBytes + 1, '\0');
  ssize_t total = 0, n;
  while (total < static_cast<ssize_t>(text.size()) &&
         (n = read(fd.fd, &text[total], text.size() - static_cast<size_t>(total))) > 0) {
    total += n;
  }
  text.resize(static_cast<size_t>(total));
  Manifest manifest = ParseManifest(text);
  for (const FileEntry& entry : manifest.files) {
    std::string path = ResolveMember(root, entry.path);
    Fd member(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    struct stat ms;
    if (member.fd < 0 || fstat(member.fd, &ms) != 0 || !S_ISREG(ms.st_mode)) {
      Fail(entry.path + " is missing or not a regular file in " + root);
    }
    if (static_cast<uint64_t>(ms.st_size) != entry.size || HashFile(member.fd) != entry.sha256) {
      Fail(entry.path + " in " + root + " differs from the manifest (changed after the build)");
    }
  }
  return manifest;
}

#if EDGEKILN_HAVE_ZLIB_H
// zlib is opened when a packed artifact is read, so that a device that only runs extracted
// artifacts needs no libz.so.1 at all.
struct Zlib {
  int (*inflate_init2)(z_streamp, int, const char*, int);
  int (*inflate)(z_streamp, int);
  int (*inflate_reset)(z_streamp);
  int (*inflate_end)(z_streamp);
  static const Zlib& Get() {
    static Zlib lib = Load();
    return lib;
  }
  static Zlib Load() {
    void* handle = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      Fail("reading a packed artifact needs zlib (libz.so.1), which this device lacks; "
           "install zlib or give the artifact's extracted directory");
    }
    Zlib z;
    z.inflate_init2 = reinterpret_cast<decltype(z.inflate_init2)>(dlsym(handle, "inflateInit2_"));
    z.inflate = reinterpret_cast<decltype(z.inflate)>(dlsym(handle, "inflate"));
    z.inflate_reset = reinterpret_cast<decltype(z.inflate_reset)>(dlsym(handle, "inflateReset"));
    z.inflate_end = reinterpret_cast<decltype(z.inflate_end)>(dlsym(handle, "inflateEnd"));
    if (!z.inflate_init2 || !z.inflate || !z.inflate_reset || !z.inflate_end) Fail("libz.so.1 lacks inflate");
    return z;
  }
};

// The decompressed bytes of a .tar.gz, refusing to go past ``limit`` of them.
class GzStream {
 public:
  GzStream(const std::string& path, uint64_t limit) : path_(path), limit(limit), in_(kChunk) {
    file_ = fopen(path.c_str(), "rb");
    if (!file_) Fail("artifact " + path + " cannot be read: " + strerror(errno));
    memset(&z_, 0, sizeof(z_));
    if (Zlib::Get().inflate_init2(&z_, 15 + 32, ZLIB_VERSION, sizeof(z_)) != Z_OK) Fail("zlib cannot start");
  }
  ~GzStream() {
    Zlib::Get().inflate_end(&z_);
    fclose(file_);
  }
  // Exactly ``size`` bytes, or an error naming the damage.
  void ReadExact(void* out, size_t size) {
    if (count + size > limit) {
      Fail(path_ + " unpacks to more than its manifest lists (" + std::to_string(limit) + " bytes with headers)");
    }
    z_.next_out = static_cast<Bytef*>(out);
    z_.avail_out = static_cast<uInt>(size);
    while (z_.avail_out > 0) {
      if (z_.avail_in == 0) {
        size_t got = fread(in_.data(), 1, in_.size(), file_);
        if (got == 0) Fail(path_ + " is damaged: unexpected end of data");
        z_.next_in = in_.data();
        z_.avail_in = static_cast<uInt>(got);
      }
      int rc = Zlib::Get().inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        Zlib::Get().inflate_reset(&z_);  // a concatenated gzip member may follow
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        Fail(path_ + " is not an edgekiln artifact (.tar.gz): " + (z_.msg ? z_.msg : "bad gzip data"));
      }
    }
    count += size;
  }
  uint64_t limit;
  uint64_t count = 0;

 private:
  std::string path_;
  FILE* file_;
  z_stream z_;
  std::vector<Bytef> in_;
};

struct Member {
  std::string name;
  uint64_t size = 0;
  char type = '0';
  bool sparse = false;
  bool regular() const { return (type == '0' || type == '\0' || type == '7') && !sparse; }
};

uint64_t Octal(const char* field, size_t width, const std::string& path) {
  if (static_cast<unsigned char>(field[0]) & 0x80) {  // base-256, for sizes over 8 GiB
    uint64_t value = 0;
    for (size_t i = 1; i < width; ++i) {
      if (value >> 55) Fail(path + " is damaged: a size field overflows");
      value = (value << 8) | static_cast<unsigned char>(field[i]);
    }
    return value;
  }
  uint64_t value = 0;
  size_t i = 0;
  while (i < width && (field[i] == ' ' || field[i] == '\0')) ++i;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i) value = value * 8 + uint64_t(field[i] - '0');
  return value;
}

void ParsePax(const std::string& data, Member* m, const std::string& path) {
  size_t pos = 0;
  while (pos < data.size()) {
    size_t space = data.find(' ', pos);
    if (space == std::string::npos) Fail(path + " is damaged: invalid PAX header");
    size_t length = strtoull(data.substr(pos, space - pos).c_str(), nullptr, 10);
    if (length == 0 || pos + length > data.size()) Fail(path + " is damaged: invalid PAX header");
    std::string record = data.substr(space + 1, pos + length - space - 2);
    size_t eq = record.find('=');
    std::string key = record.substr(0, eq), value = eq == std::string::npos ? "" : record.substr(eq + 1);
    if (key == "path") m->name = value;
    if (key == "size") m->size = strtoull(value.c_str(), nullptr, 10);
    if (key.rfind("GNU.sparse.", 0) == 0) m->sparse = true;
    pos += length;
  }
}

// The next member's header (after any PAX or GNU long-name headers); false at the end.
bool NextMember(GzStream& gz, const std::string& path, Member* out) {
  Member pending;
  bool have_pax = false;
  while (true) {
    char block[512];
    gz.ReadExact(block, sizeof(block));
    if (std::all_of(block, block + 512, [](char c) { return c == 0; })) return false;
    uint64_t sum = 0;
    for (int i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(block[i]);
    if (sum != Octal(block + 148, 8, path)) Fail(path + " is damaged: bad checksum");
    Member m;
    m.type = block[156];
    m.size = Octal(block + 124, 12, path);
    m.name.assign(block, strnlen(block, 100));
    if (memcmp(block + 257, "ustar\0", 6) == 0 && block[345]) {
      m.name = std::string(block + 345, strnlen(block + 345, 155)) + "/" + m.name;
    }
    if (m.type == 'x' || m.type == 'g' || m.type == 'L' || m.type == 'K') {
      if (m.size > kMaxManifestBytes + kHeaderAllowance) {
        Fail(path + " unpacks to more than its manifest lists (a header of " + std::to_string(m.size) + " bytes)");
      }
      std::string data(static_cast<size_t>((m.size + 511) / 512 * 512), '\0');
      gz.ReadExact(&data[0], data.size());
      data.resize(static_cast<size_t>(m.size));
      if (m.type == 'x') ParsePax(data, &pending, path), have_pax = true;
      if (m.type == 'L') pending.name = data.substr(0, strnlen(data.c_str(), data.size()));
      continue;
    }
    if (!pending.name.empty()) m.name = pending.name;
    if (have_pax && pending.size) m.size = pending.size;
    m.sparse = pending.sparse || m.type == 'S';
    if (m.type == '5' || (m.type == '\0' && !m.name.empty() && m.name.back() == '/')) {
      m.type = '5';
      while (!m.name.empty() && m.name.back() == '/') m.name.pop_back();
    }
    *out = m;
    return true;
  }
}

void Skip(GzStream& gz, uint64_t padding) {
  char buf[512];
  gz.ReadExact(buf, static_cast<size_t>(padding));
}

void MakeParents(const std::string& root, const std::string& name) {
  for (size_t pos = name.find('/'); pos != std::string::npos; pos = name.find('/', pos + 1)) {
    std::string dir = root + "/" + name.substr(0, pos);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) Fail("cannot create " + dir + ": " + strerror(errno));
  }
}

void ExtractVerified(GzStream& gz, const Member& m, const FileEntry& entry, const std::string& root,
                     const std::string& path) {
  MakeParents(root, m.name);
  std::string target = root + "/" + m.name;
  // Libraries and programs under bin/ are executable, as edgekiln/artifact/package.py makes them.
  bool executable = (m.name.size() > 3 && m.name.compare(m.name.size() - 3, 3, ".so") == 0) ||
                    m.name.rfind("bin/", 0) == 0;
  Fd out(open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, executable ? 0755 : 0644));
  if (out.fd < 0) Fail("cannot write " + target + ": " + strerror(errno));
  Sha256 digest;
  std::vector<char> buf(kChunk);
  for (uint64_t left = m.size; left > 0;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    gz.ReadExact(buf.data(), n);
    digest.Update(buf.data(), n);
    if (write(out.fd, buf.data(), n) != static_cast<ssize_t>(n)) Fail("cannot write " + target + ": " + strerror(errno));
    left -= n;
  }
  Skip(gz, (512 - m.size % 512) % 512);
  std::string got = digest.HexDigest();
  if (got != entry.sha256) {
    Fail("artifact member '" + m.name + "' has sha256 " + Short(got) + "; the manifest says " + Short(entry.sha256) +
         " (the artifact was changed after it was built)");
  }
}

Manifest FirstManifest(GzStream& gz, const std::string& path) {
  Member m;
  if (!NextMember(gz, path, &m) || m.name != "manifest.json") {
    Fail(path + " does not start with manifest.json; it is not an edgekiln artifact");
  }
  if (!m.regular()) Fail("manifest.json in " + path + " is not a regular file");
  if (m.size > kMaxManifestBytes) {
    Fail("manifest.json in " + path + " is " + std::to_string(m.size) + " bytes, over the limit of " +
         std::to_string(kMaxManifestBytes));
  }
  std::string text(static_cast<size_t>(m.size), '\0');
  if (m.size) gz.ReadExact(&text[0], text.size());
  Skip(gz, (512 - m.size % 512) % 512);
  return ParseManifest(text);
}

void Unpack(const std::string& path, const std::string& root, Manifest* manifest) {
  GzStream gz(path, kMaxManifestBytes + kHeaderAllowance);
  *manifest = FirstManifest(gz, path);
  std::map<std::string, const FileEntry*> expected;
  uint64_t total = 0;
  for (const FileEntry& f : manifest->files) expected[f.path] = &f, total += f.size;
  uint64_t limit = MaxUnpackedBytes();
  if (total > limit) {
    Fail(path + " lists " + std::to_string(total) + " bytes of files, over the limit of " + std::to_string(limit) +
         " (for a model this large, set EDGEKILN_MAX_UNPACKED_BYTES to a higher byte count)");
  }
  gz.limit += total + 2048 * (expected.size() + 2);
  std::set<std::string> seen;
  Member m;
  while (NextMember(gz, path, &m)) {
    if (m.name == "manifest.json") Fail("artifact holds manifest.json twice");
    CheckMemberPath(m.name);
    if (!m.regular()) Fail("artifact member '" + m.name + "' is not a regular file");
    auto it = expected.find(m.name);
    if (it == expected.end()) Fail("artifact member '" + m.name + "' is not listed in the manifest");
    if (seen.count(m.name)) Fail("artifact member '" + m.name + "' appears twice");
    if (m.size != it->second->size) {
      Fail("artifact member '" + m.name + "' is " + std::to_string(m.size) + " bytes; the manifest says " +
           std::to_string(it->second->size));
    }
    seen.insert(m.name);
    ExtractVerified(gz, m, *it->second, root, path);
  }
  std::string missing;
  for (const auto& kv : expected) {
    if (!seen.count(kv.first)) missing += (missing.empty() ? "" : ", ") + kv.first;
  }
  if (!missing.empty()) Fail("artifact lacks files its manifest lists: " + missing);
}
#endif  // EDGEKILN_HAVE_ZLIB_H

}  // namespace

Sha256::Sha256() : ctx_(new SHA256_CTX) { sha256_init(static_cast<SHA256_CTX*>(ctx_)); }
Sha256::~Sha256() { delete static_cast<SHA256_CTX*>(ctx_); }
void Sha256::Update(const void* data, size_t size) {
  sha256_update(static_cast<SHA256_CTX*>(ctx_), static_cast<const BYTE*>(data), size);
}
std::string Sha256::HexDigest() {
  BYTE hash[SHA256_BLOCK_SIZE];
  sha256_final(static_cast<SHA256_CTX*>(ctx_), hash);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (BYTE b : hash) out += hex[b >> 4], out += hex[b & 15];
  return out;
}

uint64_t MaxUnpackedBytes() {
  const char* text = getenv("EDGEKILN_MAX_UNPACKED_BYTES");
  if (!text || !*text) return uint64_t(1) << 30;
  char* end = nullptr;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno || *end || value <= 0) {
    Fail(std::string("EDGEKILN_MAX_UNPACKED_BYTES='") + std::string(text).substr(0, 40) +
         "' is not a positive number of bytes");
  }
  return static_cast<uint64_t>(value);
}

void RemoveTree(const std::string& root) {
  DIR* dir = opendir(root.c_str());
  if (dir) {
    while (struct dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string path = root + "/" + name;
      struct stat st;
      if (lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) RemoveTree(path);
      else unlink(path.c_str());
    }
    closedir(dir);
  }
  rmdir(root.c_str());
}

OpenedArtifact OpenArtifact(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) Fail("artifact " + path + " does not exist");
  OpenedArtifact opened;
  if (S_ISDIR(st.st_mode)) {
    opened.manifest = VerifyDirectory(path);
    opened.root = path;
    return opened;
  }
  if (!S_ISREG(st.st_mode)) Fail("artifact " + path + " is not a file");
#if EDGEKILN_HAVE_ZLIB_H
  const char* tmp = getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgekiln-model-XXXXXX";
  if (!mkdtemp(&pattern[0])) Fail("cannot create a directory for the artifact: " + std::string(strerror(errno)));
  try {
    Unpack(path, pattern, &opened.manifest);
  } catch (...) {
    RemoveTree(pattern);  // a refused artifact leaves nothing behind
    throw;
  }
  opened.root = pattern;
  opened.temporary = true;
  return opened;
#else
  Fail("this build of libedgekiln reads extracted artifact directories only; extract " + path + " first");
#endif
}

std::vector<std::string> ReadLabels(const std::string& root, const std::string& name) {
  std::string path = ResolveMember(root, name);
  Fd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.fd < 0) Fail("cannot read the labels file " + name + ": " + strerror(errno));
  std::string data(kMaxLabelsBytes + 1, '\0');
  ssize_t total = 0, n;
  while (total < static_cast<ssize_t>(data.size()) &&
         (n = read(fd.fd, &data[total], data.size() - static_cast<size_t>(total))) > 0) {
    total += n;
  }
  if (static_cast<uint64_t>(total) > kMaxLabelsBytes) Fail("the labels file " + name + " is over 4 MiB");
  data.resize(static_cast<size_t>(total));
  std::vector<std::string> labels;
  size_t start = 0;
  while (start <= data.size()) {
    size_t end = data.find_first_of("\r\n", start);
    std::string line = data.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!line.empty() && line[0] != '#') labels.push_back(line);
    if (end == std::string::npos) break;
    start = end + ((data[end] == '\r' && end + 1 < data.size() && data[end + 1] == '\n') ? 2 : 1);
  }
  return labels;
}

}  // namespace edgekiln
