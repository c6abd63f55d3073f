// manifest.json: parsed with tvm-ffi's JSON reader and validated as manifest.py does, for
// the fields the native runtime relies on; and the device compatibility check (compat.py).
#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "artifact.h"

namespace edgekiln {
namespace json = tvm::ffi::json;
using tvm::ffi::Any;
using tvm::ffi::String;

namespace {

constexpr int kSchemaVersion = 1;
// tvm-ffi's parser recurses once per nesting level; manifests nest four levels deep, so
// anything deeper is refused before parsing instead of risking the stack.
constexpr int kMaxJsonDepth = 64;
const char* const kDtypes[] = {"float32", "float16", "int8", "uint8", "int32", "int64"};

[[noreturn]] void Fail(const std::string& message) { throw ArtifactError(message); }

void CheckDepth(const std::string& text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) Fail("manifest.json is not valid JSON: nested too deeply");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

json::Object Object(const Any& value, const std::string& where) {
  auto obj = value.as<json::Object>();
  if (!obj) Fail("manifest.json has a malformed field: " + where + " must be an object");
  return *obj;
}

bool Has(const json::Object& obj, const char* key) { return obj.count(String(key)) != 0; }

Any Field(const json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(String(key));
  if (it == obj.end()) Fail(std::string("manifest.json lacks the field '") + key + "'" +
                            (where.empty() ? "" : " in " + where));
  return (*it).second;
}

std::string Text(const Any& value, const std::string& where) {
  auto s = value.as<String>();
  if (!s) Fail("manifest.json has a malformed field: " + where + " must be a string");
  return std::string(*s);
}

std::string OptionalText(const json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(String(key));
  if (it == obj.end() || (*it).second == nullptr) return "";
  return Text((*it).second, where);
}

int64_t Integer(const Any& value, const std::string& where) {
  if (value.as<bool>()) Fail("manifest.json has a malformed field: " + where + " must be int");
  auto i = value.as<int64_t>();
  if (!i) Fail("manifest.json has a malformed field: " + where + " must be int");
  return *i;
}

json::Array List(const Any& value, const std::string& where, size_t limit) {
  auto arr = value.as<json::Array>();
  if (!arr) Fail("manifest.json has a malformed field: " + where + " must be a list");
  if (arr->size() > limit) {
    Fail("manifest.json has a malformed field: " + where + " has " + std::to_string(arr->size()) +
         " entries, over the limit of " + std::to_string(limit));
  }
  return *arr;
}

TensorSpec Tensor(const Any& value) {
  json::Object obj = Object(value, "TensorSpec");
  TensorSpec spec;
  spec.name = Text(Field(obj, "name", "TensorSpec"), "TensorSpec.name");
  spec.dtype = Text(Field(obj, "dtype", "TensorSpec"), "TensorSpec.dtype");
  if (std::find_if(std::begin(kDtypes), std::end(kDtypes),
                   [&](const char* d) { return spec.dtype == d; }) == std::end(kDtypes)) {
    Fail("tensor '" + spec.name + "': unsupported dtype '" + spec.dtype + "'");
  }
  json::Array shape = List(Field(obj, "shape", "TensorSpec"), "TensorSpec.shape", 1000);
  if (shape.size() > 8) Fail("tensor '" + spec.name + "': shape is not a list of up to 8 sizes");
  for (const Any& d : shape) {
    int64_t size = Integer(d, "TensorSpec.shape");
    if (size < 0) Fail("tensor '" + spec.name + "': shape is not a list of up to 8 sizes");
    spec.shape.push_back(size);
  }
  if (spec.elements() > kMaxTensorElements) Fail("tensor '" + spec.name + "': shape has over 2^31 elements");
  return spec;
}

bool IsSha256(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

FileEntry File(const Any& value) {
  json::Object obj = Object(value, "FileEntry");
  FileEntry entry;
  entry.path = Text(Field(obj, "path", "FileEntry"), "FileEntry.path");
  int64_t size = Integer(Field(obj, "size", "FileEntry"), "FileEntry.size");
  entry.sha256 = Text(Field(obj, "sha256", "FileEntry"), "FileEntry.sha256");
  entry.role = Text(Field(obj, "role", "FileEntry"), "FileEntry.role");
  CheckMemberPath(entry.path);
  if (size < 0) Fail("manifest.json gives '" + entry.path + "' a negative size");
  if (!IsSha256(entry.sha256)) Fail("manifest.json gives '" + entry.path + "' a sha256 that is not 64 hex digits");
  entry.size = static_cast<uint64_t>(size);
  return entry;
}

void ReadRuntime(const json::Object& runtime, Manifest* m) {
  m->arch = Text(Field(runtime, "arch", "runtime"), "RuntimeRequirements.arch");
  m->os = Has(runtime, "os") ? OptionalText(runtime, "os", "RuntimeRequirements.os") : "linux";
  m->glibc = OptionalText(runtime, "glibc", "RuntimeRequirements.glibc");
  m->cuda = !OptionalText(runtime, "cuda_arch", "RuntimeRequirements.cuda_arch").empty();
  if (Has(runtime, "cpu_features")) {
    for (const Any& f : List(Field(runtime, "cpu_features", ""), "RuntimeRequirements.cpu_features", 1000)) {
      m->cpu_features.push_back(Text(f, "RuntimeRequirements.cpu_features"));
    }
  }
}

void CheckFiles(const Manifest& m) {
  std::set<std::string> paths;
  for (const FileEntry& f : m.files) {
    if (f.path == "manifest.json") Fail("manifest.json lists manifest.json among its files");
    if (!paths.insert(f.path).second) Fail("manifest.json lists a file twice");
  }
  if (!m.labels.empty()) {
    CheckMemberPath(m.labels, "labels file");
    if (!paths.count(m.labels)) Fail("the labels file '" + m.labels + "' is not one of the artifact's files");
  }
}

}  // namespace

uint64_t TensorSpec::elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) {
    // Saturate instead of overflowing: anything past the bound is refused anyway.
    if (d != 0 && n > (kMaxTensorElements << 8) / static_cast<uint64_t>(d)) return kMaxTensorElements + 1;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

size_t TensorSpec::itemsize() const {
  if (dtype == "float16") return 2;
  if (dtype == "int8" || dtype == "uint8") return 1;
  if (dtype == "int64") return 8;
  return 4;
}

const FileEntry* Manifest::file(const std::string& role) const {
  for (const FileEntry& f : files) {
    if (f.role == role) return &f;
  }
  return nullptr;
}

void CheckMemberPath(const std::string& name, const char* what) {
  std::string shown = name.substr(0, 60);
  if (name.empty()) Fail(std::string(what) + " '' is not a file name");
  if (name.size() > 255) Fail(std::string(what) + " '" + shown + "'... is over 255 characters");
  if (name[0] == '/' || name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) {
    Fail(std::string(what) + " '" + shown + "' is absolute or not a POSIX path");
  }
  size_t start = 0;
  while (true) {
    size_t end = name.find('/', start);
    std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part == "." || part == "..") {
      Fail(std::string(what) + " '" + shown + "' escapes the artifact: it must be a normal relative path inside it");
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
}

Manifest ParseManifest(const std::string& text) {
  if (text.size() > kMaxManifestBytes) {
    Fail("manifest.json is " + std::to_string(text.size()) + " bytes, over the limit of " +
         std::to_string(kMaxManifestBytes));
  }
  CheckDepth(text);
  String error;
  json::Value root = json::Parse(String(text), &error);
  if (!error.empty()) Fail("manifest.json is not valid JSON: " + std::string(error).substr(0, 200));
  auto top = root.as<json::Object>();
  if (!top) Fail("manifest.json is not a JSON object");
  json::Object obj = *top;
  auto version = Has(obj, "schema_version") ? (*obj.find(String("schema_version"))).second : Any();
  if (version.as<bool>() || !version.as<int64_t>() || *version.as<int64_t>() != kSchemaVersion) {
    Fail("manifest schema version is not supported by this edgekiln (it reads version 1)");
  }
  Manifest m;
  m.profile = Text(Field(obj, "profile", ""), "profile");
  m.backend = Text(Field(obj, "backend", ""), "backend");
  Text(Field(obj, "target_triple", ""), "target_triple");
  Object(Field(obj, "model", ""), "ModelInfo");
  Object(Field(obj, "validation", ""), "Validation");
  ReadRuntime(Object(Field(obj, "runtime", ""), "RuntimeRequirements"), &m);
  for (const Any& t : List(Field(obj, "inputs", ""), "inputs", 1000)) m.inputs.push_back(Tensor(t));
  for (const Any& t : List(Field(obj, "outputs", ""), "outputs", 1000)) m.outputs.push_back(Tensor(t));
  for (const Any& f : List(Field(obj, "files", ""), "files", kMaxFiles)) m.files.push_back(File(f));
  m.labels = OptionalText(obj, "labels", "labels");
  CheckFiles(m);
  return m;
}

namespace {

std::string HostArch() {
  struct utsname u;
  if (uname(&u) != 0) return "unknown";
  std::string machine = u.machine;
  if (machine == "amd64") return "x86_64";
  if (machine == "arm64") return "aarch64";
  // armv8l: a 32-bit userland on a 64-bit ARM core, the same ABI as armv7l.
  if (machine == "armv8l" || machine == "armv7l") return "armv7l";
  return machine;
}

std::set<std::string> HostCpuFeatures() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    std::string key = line.substr(0, line.find(':'));
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key == "flags" || key == "Features") {
      std::istringstream words(line.substr(line.find(':') + 1));
      return std::set<std::string>(std::istream_iterator<std::string>(words), std::istream_iterator<std::string>());
    }
  }
  return {};
}

std::vector<int> VersionTuple(const std::string& text) {
  std::vector<int> parts;
  std::istringstream in(text);
  std::string part;
  while (std::getline(in, part, '.')) {
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) parts.push_back(std::stoi(part));
  }
  return parts;
}

}  // namespace

std::vector<std::string> CompatibilityProblems(const Manifest& m) {
  std::vector<std::string> found;
  std::string arch = HostArch();
  if (m.arch != arch) found.push_back("the artifact needs a " + m.arch + " CPU; this device is " + arch);
  if (m.os != "linux") found.push_back("the artifact needs " + m.os + "; this device runs linux");
  std::string glibc = gnu_get_libc_version();
  if (!m.glibc.empty() && VersionTuple(glibc) < VersionTuple(m.glibc)) {
    found.push_back("the artifact needs glibc >= " + m.glibc + "; this device has " + glibc);
  }
  std::set<std::string> features = HostCpuFeatures();
  if (m.arch == arch && !features.empty()) {
    std::string missing;
    for (const std::string& f : m.cpu_features) {
      if (!features.count(f)) missing += (missing.empty() ? "" : ", ") + f;
    }
    if (!missing.empty()) found.push_back("the artifact needs CPU features " + missing + " that this CPU lacks");
  }
  if (m.cuda) found.push_back("the artifact holds CUDA code; the native runtime runs CPU artifacts only");
  if (m.backend != "tvm") found.push_back("the artifact's backend is " + m.backend + "; the native runtime runs tvm artifacts only");
  return found;
}

}  // namespace edgekiln
