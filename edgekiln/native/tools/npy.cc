#include "npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace {

constexpr uint64_t kMaxNpyBytes = uint64_t(1) << 31;
constexpr size_t kMaxHeader = 1 << 16;

[[noreturn]] void Fail(const std::string& path, const std::string& why) {
  throw std::runtime_error(path + " is not a readable .npy array: " + why);
}

std::string DictValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  size_t colon = header.find(':', at);
  if (colon == std::string::npos) return "";
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos) return "";
  char open = header[start];
  size_t end = open == '(' ? header.find(')', start) + 1
             : open == '\'' ? header.find('\'', start + 1) + 1
                            : header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

std::string DtypeName(const std::string& descr, const std::string& path) {
  static const char* names[][2] = {{"<f4", "float32"}, {"<f8", "float64"}, {"<f2", "float16"},
                                   {"|u1", "uint8"},   {"|i1", "int8"},    {"<i4", "int32"},
                                   {"<i8", "int64"},   {"<u1", "uint8"},   {"<i1", "int8"}};
  std::string d = descr.size() >= 2 ? descr.substr(1, descr.size() - 2) : "";
  for (auto& n : names) {
    if (d == n[0]) return n[1];
  }
  Fail(path, "dtype " + descr + " is not supported");
}

size_t ItemSize(const std::string& dtype) {
  if (dtype == "float64" || dtype == "int64") return 8;
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "float16") return 2;
  return 1;
}

double Load(const char* p, const std::string& dtype) {
  if (dtype == "float64") return *reinterpret_cast<const double*>(p);
  if (dtype == "float32") return *reinterpret_cast<const float*>(p);
  if (dtype == "int32") return *reinterpret_cast<const int32_t*>(p);
  if (dtype == "int64") return static_cast<double>(*reinterpret_cast<const int64_t*>(p));
  if (dtype == "int8") return *reinterpret_cast<const int8_t*>(p);
  return *reinterpret_cast<const uint8_t*>(p);
}

}  // namespace

NpyArray ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, "cannot open it");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) Fail(path, "no .npy magic");
  uint32_t header_len = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  int width = magic[6] == 1 ? 2 : 4;
  if (!in.read(reinterpret_cast<char*>(len), width)) Fail(path, "truncated header");
  for (int i = width - 1; i >= 0; --i) header_len = (header_len << 8) | len[i];
  if (header_len > kMaxHeader) Fail(path, "header too large");
  std::string header(header_len, '\0');
  if (!in.read(&header[0], header_len)) Fail(path, "truncated header");
  if (DictValue(header, "fortran_order") != "False") Fail(path, "only C-order arrays are supported");
  NpyArray array;
  array.dtype = DtypeName(DictValue(header, "descr"), path);
  std::string shape = DictValue(header, "shape");
  uint64_t elements = 1;
  for (size_t pos = 1; pos < shape.size();) {
    size_t end = shape.find_first_of(",)", pos);
    std::string part = shape.substr(pos, end - pos);
    if (part.find_first_not_of(' ') != std::string::npos) {
      int64_t d = std::stoll(part);
      if (d < 0 || (d && elements > kMaxNpyBytes / static_cast<uint64_t>(d))) Fail(path, "shape too large");
      array.shape.push_back(d);
      elements *= static_cast<uint64_t>(d);
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  uint64_t bytes = elements * ItemSize(array.dtype);
  if (bytes > kMaxNpyBytes) Fail(path, "over 2 GiB");
  array.data.resize(static_cast<size_t>(bytes));
  if (bytes && !in.read(array.data.data(), static_cast<std::streamsize>(bytes))) Fail(path, "truncated data");
  return array;
}

std::vector<char> ConvertTo(const NpyArray& array, const std::string& dtype) {
  if (array.dtype == dtype) return array.data;
  bool to_float = dtype == "float32" || dtype == "float64";
  bool from_float = array.dtype.rfind("float", 0) == 0;
  if (!to_float || array.dtype == "float16" || (from_float && dtype != "float32" && dtype != "float64")) {
    throw std::runtime_error("input must be " + dtype + ", got " + array.dtype);
  }
  size_t n = array.data.size() / ItemSize(array.dtype);
  std::vector<char> out(n * ItemSize(dtype));
  for (size_t i = 0; i < n; ++i) {
    double v = Load(array.data.data() + i * ItemSize(array.dtype), array.dtype);
    if (dtype == "float32") reinterpret_cast<float*>(out.data())[i] = static_cast<float>(v);
    else reinterpret_cast<double*>(out.data())[i] = v;
  }
  return out;
}

void WriteNpy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape, const void* data) {
  static const char* descrs[][2] = {{"float32", "<f4"}, {"float64", "<f8"}, {"float16", "<f2"}, {"uint8", "|u1"},
                                    {"int8", "|i1"},    {"int32", "<i4"},   {"int64", "<i8"}};
  std::string descr;
  for (auto& d : descrs) {
    if (dtype == d[0]) descr = d[1];
  }
  if (descr.empty()) throw std::runtime_error("cannot write a " + dtype + " output as .npy");
  std::string dims;
  uint64_t elements = 1;
  for (int64_t d : shape) dims += std::to_string(d) + ",", elements *= static_cast<uint64_t>(d);
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic, version and length take 10 bytes; the header is padded to a multiple of 64.
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  char len[2] = {static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(elements * ItemSize(dtype)));
  if (!out) throw std::runtime_error("cannot write " + path);
}
